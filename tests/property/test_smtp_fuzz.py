"""Fuzz: whatever bytes a client sends, however TCP splits them, the SMTP engine
never fails (no exception, none logged by its catch-all), answers only with
well-formed replies, and answers the same for the same bytes."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.session.engine import ClientInfo
from lib.session.runtime import Services, load_runtime
from lib.smtp.session import SmtpSession

from ..support import PASSWORD
from .drive import ENDINGS, TLS, ExceptionWatcher, Setup, cheap_hash, converse, fresh_services
from .test_wire_properties import data_stream

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -][^\r\n]*\r\n$")
QUEUE_ID = re.compile(rb"queued as [0-9A-F]+")

CONFIG = """
[server]
hostname = mail.example.org
data_dir = data
log = stderr

[limits]
max_message_size = 2K
max_recipients = 3

[tls]
cert = {cert}
key = {key}

[domains]
example.org = *

[mailboxes]
bhayden = {hash}

[aliases]
postmaster = bhayden
"""


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Every conversation sends each of these once, in an order hypothesis picks,
# so every command handler runs in every example, in whatever state it finds.
COMMANDS = [
    "EHLO x", "HELO x", "EHLO", "MAIL FROM:<a@example.com>", "MAIL FROM:<>",
    "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME", "MAIL FROM:<jö@example.com> SMTPUTF8",
    "MAIL FROM:<a@example.com> SIZE=99999", "MAIL FROM:<bhayden@example.org> X=Y",
    "RCPT TO:<bhayden@example.org>", "RCPT TO:<x@remote.example>", "RCPT TO:<nobody@example.org>",
    "RCPT TO:<Postmaster>", "RCPT TO:<jö@example.org>", "RSET", "NOOP", "VRFY x", "HELP",
    "STARTTLS", "EXPN x", "AUTH PLAIN", "AUTH LOGIN", "AUTH CRAM-MD5",
    f"AUTH PLAIN {plain('bhayden', PASSWORD)}", f"AUTH PLAIN {plain('bhayden', 'wrong')}",
    f"AUTH LOGIN {b64('bhayden')}"]
# ... and some of these, which end the session, start DATA or only make sense in AUTH
EXTRAS = ["DATA", "QUIT", "GET / HTTP/1.1", b64(PASSWORD), plain("bhayden", PASSWORD), "*", "="]
line_ending = st.sampled_from([b"\r\n", b"\n"])
extra = st.builds(lambda verb, end: verb.encode() + end, st.sampled_from(EXTRAS), line_ending)
garbage = st.builds(lambda data, end: data.replace(b"\n", b"") + end,
                    st.binary(max_size=80), line_ending)
long_line = st.sampled_from([b"X" * 600 + b"\r\n", b"A" * 12_300 + b"\r\n"])
message = st.builds(
    lambda sender, rcpts, body: b"MAIL FROM:<%s>\r\n%sDATA\r\n%s\r\n.\r\n"
    % (sender, b"".join(b"RCPT TO:<%s>\r\n" % rcpt for rcpt in rcpts), body),
    st.sampled_from([b"a@example.com", b"bhayden@example.org", b""]),
    st.lists(st.sampled_from([b"bhayden@example.org", b"x@remote.example", b"no@example.org"]),
             min_size=1, max_size=4),
    data_stream)
login = st.sampled_from([
    f"AUTH LOGIN\r\n{b64('bhayden')}\r\n{b64(PASSWORD)}\r\n",
    f"AUTH LOGIN\r\n{b64('bhayden')}\r\n{b64('wrong')}\r\n",
    f"AUTH PLAIN\r\n{plain('bhayden', PASSWORD)}\r\n",
    f"AUTH PLAIN\r\n{'A' * 12_300}\r\n",
    "AUTH LOGIN\r\n*\r\n", "AUTH LOGIN\r\n%%%\r\n"]).map(str.encode)


@st.composite
def conversation(draw) -> bytes:
    items = [verb.encode() + draw(line_ending) for verb in COMMANDS]
    items += draw(st.lists(st.one_of(message, message, login, extra, garbage, long_line),
                           max_size=8))
    return b"EHLO client.example\r\n" + b"".join(draw(st.permutations(items)))


clients = st.sampled_from([ClientInfo("192.0.2.1", 1, "smtp"),
                           ClientInfo("192.0.2.1", 1, "smtp", TLS),
                           ClientInfo("127.0.0.1", 1, "smtp"),
                           ClientInfo("192.0.2.1", 1, "submission", TLS)])
piece_sizes = st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, certificate):
    path = tmp_path_factory.mktemp("smtpfuzz") / "fuzz.ini"
    path.write_text(CONFIG.format(cert=certificate[0], key=certificate[1],
                                  hash=cheap_hash(PASSWORD)))
    runtime = load_runtime(path)
    return Setup(runtime, Services.create(runtime.config))


def talk(setup: Setup, client: ClientInfo, data: bytes, sizes: list[int],
         ending: str) -> list[bytes]:
    """One conversation; fails on any exception; returns what was sent, ids masked."""
    watcher = ExceptionWatcher()
    session = SmtpSession(setup.runtime, fresh_services(setup.services), client,
                          log=watcher.log("smtp"))
    sent = converse(session, watcher, data, sizes, ending)
    for reply in sent:
        for line in reply.splitlines(keepends=True):
            assert REPLY_LINE.match(line), reply
    return [QUEUE_ID.sub(b"queued as ID", reply) for reply in sent]


@settings(max_examples=300, deadline=None)
@given(client=clients, data=conversation(), sizes=piece_sizes, ending=st.sampled_from(ENDINGS))
def test_any_input_however_split_gets_the_same_well_formed_replies(setup, client, data, sizes,
                                                                  ending):
    whole = talk(setup, client, data, [len(data) or 1], ending)
    assert talk(setup, client, data, [1], ending) == whole          # byte by byte
    assert talk(setup, client, data, sizes, ending) == whole


@settings(max_examples=150, deadline=None)
@given(client=clients, data=st.binary(max_size=400), ending=st.sampled_from(ENDINGS))
def test_arbitrary_bytes_get_well_formed_replies(setup, client, data, ending):
    talk(setup, client, data, [len(data) or 1], ending)
    talk(setup, client, data, [1], ending)
