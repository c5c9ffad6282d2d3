"""Property tests: address parsing never crashes, normalisation is idempotent,
quoted local parts stay literal."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from lib.core.addresses import Address, AddressError, format_local_part, parse_mailbox, parse_path

atext = st.sampled_from(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
atom = st.text(atext, min_size=1, max_size=10)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
quoted_content = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                         max_size=30)


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_parse_path_never_crashes(text):
    for utf8 in (False, True):
        try:
            address, rest = parse_path(text, utf8=utf8)
        except AddressError:
            continue
        assert address is None or isinstance(address, Address)
        assert isinstance(rest, str)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_parse_bytes_as_surrogates_never_crashes(data):
    text = data.decode("utf-8", "surrogateescape")
    try:
        parse_path(text, utf8=True)
    except AddressError:
        pass


@given(dot_string, domain)
def test_round_trip_of_dot_strings(local, dom):
    text = f"{local}@{dom}"
    if len(local) > 64 or len(dom) > 255:
        return
    address = parse_mailbox(text)
    assert address.local == local and address.domain == dom.lower()
    assert str(address) == f"{local}@{dom.lower()}"


@given(quoted_content, domain)
def test_quoted_local_parts_stay_literal(content, dom):
    escaped = content.replace("\\", "\\\\").replace('"', '\\"')
    try:
        address = parse_mailbox(f'"{escaped}"@{dom}')
    except AddressError:
        assert len(content.encode()) > 64       # only the length limit may refuse it
        return
    assert address.local == content             # '@', '%', '!' ... all literal
    assert parse_mailbox(str(address)) == address


@given(st.one_of(dot_string, quoted_content), domain)
def test_normalisation_is_idempotent(local, dom):
    try:
        address = parse_mailbox(f"{format_local_part(local)}@{dom}")
    except AddressError:
        return
    once = address.normalised()
    assert once.normalised() == once
    assert parse_mailbox(str(once)).normalised() == once
