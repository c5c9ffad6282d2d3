"""RFC 5321 path and mailbox parsing."""

from __future__ import annotations

import pytest

from lib.core.addresses import Address, AddressError, format_local_part, parse_mailbox, parse_path


def test_simple_mailbox():
    assert parse_mailbox("BHayden@Example.NET") == Address("BHayden", "example.net")
    assert str(parse_mailbox("a.b-c+d@x.example")) == "a.b-c+d@x.example"


def test_path_with_params():
    address, rest = parse_path("<alice@example.org> SIZE=1000 BODY=8BITMIME")
    assert address == Address("alice", "example.org")
    assert rest == "SIZE=1000 BODY=8BITMIME"


def test_null_path():
    assert parse_path("<>") == (None, "")
    assert parse_path("<> SIZE=10") == (None, "SIZE=10")


def test_space_after_colon_and_bare_address_are_tolerated():
    assert parse_path(" <a@example.org>")[0] == Address("a", "example.org")
    assert parse_path("a@example.org SIZE=5") == (Address("a", "example.org"), "SIZE=5")


def test_source_route_is_dropped_never_followed():
    address, _ = parse_path("<@relay.example,@other.example:user@final.example>")
    assert address == Address("user", "final.example")


def test_quoted_local_part_kept_literally():
    address = parse_mailbox('"john@other.example"@example.org')
    assert address.local == "john@other.example" and address.domain == "example.org"
    assert str(address) == '"john@other.example"@example.org'
    assert parse_mailbox('"a\\"b"@x.example').local == 'a"b'
    assert parse_mailbox('"with space"@x.example').local == "with space"


def test_quoted_dot_string_equals_plain():
    assert parse_mailbox('"alice"@example.org') == parse_mailbox("alice@example.org")
    assert str(parse_mailbox('"alice"@example.org')) == "alice@example.org"


def test_percent_and_bang_are_local_part_characters():
    assert parse_mailbox("a%b@example.org").local == "a%b"
    assert parse_mailbox("host!user@example.org").local == "host!user"


def test_address_literals():
    assert parse_mailbox("a@[192.0.2.1]").domain == "[192.0.2.1]"
    assert parse_mailbox("a@[IPv6:2001:DB8::1]").domain == "[IPv6:2001:db8::1]"
    with pytest.raises(AddressError):
        parse_mailbox("a@[300.1.1.1]")


@pytest.mark.parametrize("text", [
    "", "@example.org", "alice@", "alice", "al ice@example.org", "a..b@example.org",
    ".a@example.org", "a.@example.org", "a@-example.org", "a@example..org", "a@exa_mple.org",
    '"unterminated@example.org', "a@b@example.org", "a@example.org.",
    "x" * 65 + "@example.org", "a@" + "b" * 64 + ".example",
])
def test_invalid_mailboxes(text):
    with pytest.raises(AddressError):
        parse_mailbox(text)


@pytest.mark.parametrize("text", [
    "<alice@example.org", "<alice@example.org>SIZE=1", "<@relay.example>",
    "<@relay.example:>",
])
def test_invalid_paths(text):
    with pytest.raises(AddressError):
        parse_path(text)


def test_path_length_limit():
    long_domain = ".".join(["d" * 60] * 4)             # 243 octets: a valid domain
    with pytest.raises(AddressError):
        parse_path(f"<{'l' * 20}@{long_domain}>")        # but the path exceeds 256


def test_utf8_needs_smtputf8():
    with pytest.raises(AddressError):
        parse_mailbox("jösé@example.org")
    assert parse_mailbox("jösé@example.org", utf8=True).local == "jösé"
    assert parse_mailbox("a@bücher.example", utf8=True).domain == "xn--bcher-kva.example"


def test_bare_postmaster():
    assert parse_path("<Postmaster>", bare_postmaster_domain="example.org")[0] == \
        Address("postmaster", "example.org")
    with pytest.raises(AddressError):
        parse_path("<Postmaster>")


def test_format_local_part_quotes_only_when_needed():
    assert format_local_part("plain.name") == "plain.name"
    assert format_local_part("two words") == '"two words"'
    assert format_local_part('a"b\\c') == '"a\\"b\\\\c"'
    assert format_local_part("a..b") == '"a..b"'
