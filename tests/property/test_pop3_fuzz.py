"""Fuzz: whatever bytes a client sends, however TCP splits them, the POP3 engine
never fails (no exception, none logged by its catch-all), answers only +OK,
-ERR or a SASL continuation, ends every multi-line body with ".", and answers
the same for the same bytes over the same mailbox."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.pop3.session import Pop3Session
from lib.session.engine import ClientInfo
from lib.session.runtime import Services, load_runtime

from ..support import PASSWORD
from .drive import ENDINGS, TLS, ExceptionWatcher, Setup, cheap_hash, converse, fresh_services

CONFIG = """
[server]
hostname = mail.example.org
data_dir = data
log = stderr

[tls]
cert = {cert}
key = {key}

[domains]
example.org = *

[mailboxes]
alice = {hash}
bhayden = {hash}

[aliases]
postmaster = bhayden
"""

TOKEN = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
LOGIN = f"USER alice\r\nPASS {PASSWORD}\r\n".encode()
# Every conversation sends each of these once, in an order hypothesis picks,
# so every command handler runs in every example, in whatever state it finds.
COMMANDS = [
    "USER alice", "USER", f"PASS {PASSWORD}", "PASS x", "STAT", "LIST", "LIST 1", "LIST 3",
    "LIST x", "UIDL", "UIDL 2", "UIDL 9", "RETR 1", "RETR 2", "RETR 3", "RETR 4", "TOP 1 0",
    "TOP 2 1", "TOP 3 5", "TOP 1", "DELE 1", "DELE 3", "RSET", "NOOP", "CAPA", "AUTH",
    "AUTH PLAIN", f"AUTH PLAIN {TOKEN}", "AUTH CRAM-MD5", "STLS"]
# ... and some of these, which end the session or only make sense in AUTH
EXTRAS = ["QUIT", TOKEN, "*", "%%%"]
line_ending = st.sampled_from([b"\r\n", b"\n"])
extra = st.builds(lambda verb, end: verb.encode() + end, st.sampled_from(EXTRAS), line_ending)
garbage = st.builds(lambda data, end: data.replace(b"\n", b"") + end,
                    st.binary(max_size=60), line_ending)
long_line = st.sampled_from([b"L" * 300 + b"\r\n", b"A" * 12_300 + b"\r\n"])
login = st.sampled_from([LOGIN, f"AUTH PLAIN\r\n{TOKEN}\r\n".encode(),
                         b"USER alice\r\nPASS wrong\r\n", b"AUTH PLAIN\r\n%%%\r\n"])


@st.composite
def conversation(draw) -> bytes:
    items = [verb.encode() + draw(line_ending) for verb in COMMANDS]
    items += draw(st.lists(st.one_of(login, extra, extra, garbage, long_line), max_size=6))
    # Half the conversations log in first (STLS first, so a stranger may), so the
    # TRANSACTION commands find a mailbox.
    first = draw(st.sampled_from([b"", b"STLS\r\n" + LOGIN]))
    return first + b"".join(draw(st.permutations(items)))


clients = st.sampled_from([ClientInfo("127.0.0.1", 1, "pop3"),
                           ClientInfo("192.0.2.9", 1, "pop3"),
                           ClientInfo("192.0.2.9", 1, "pop3s", TLS)])
piece_sizes = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8)


class Mailbox:
    """alice's Maildir, put back as it was before each conversation (a QUIT
    deletes and marks messages): the same files under the same names, so the
    same numbers, sizes and UIDs."""

    def __init__(self, services: Services):
        self.root = services.store.path("alice")
        services.store.deliver(["alice"], b"Subject: one\n\n.dot line\nbody\n")
        services.store.deliver(["alice"], b"Subject: two\n\n" + b"line\n.\n" * 500)
        # Another program's file (no sizes in its name, CRLF, no final newline):
        # RETR streams it, as it does files above RETR_CHUNK.
        (self.root / "new" / "1700000000.M1P1.other.host").write_bytes(
            b"Subject: three\r\n\r\n..no final newline")
        self.files = self._contents()

    def _contents(self) -> dict[str, bytes]:
        return {f"{folder}/{name}": (self.root / folder / name).read_bytes()
                for folder in ("new", "cur") for name in os.listdir(self.root / folder)}

    def restore(self) -> None:
        if {f"{folder}/{name}" for folder in ("new", "cur")
                for name in os.listdir(self.root / folder)} == set(self.files):
            return                               # files are renamed or removed, never changed
        for folder in ("new", "cur", "tmp"):
            for name in os.listdir(self.root / folder):
                os.unlink(self.root / folder / name)
        for relative, data in self.files.items():
            (self.root / relative).write_bytes(data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, certificate):
    path = tmp_path_factory.mktemp("popfuzz") / "fuzz.ini"
    path.write_text(CONFIG.format(cert=certificate[0], key=certificate[1],
                                  hash=cheap_hash(PASSWORD)))
    runtime = load_runtime(path)
    services = Services.create(runtime.config)
    return Setup(runtime, services, Mailbox(services))


def talk(setup: Setup, client: ClientInfo, data: bytes, sizes: list[int],
         ending: str) -> list[bytes]:
    """One conversation; fails on any exception; returns what was sent."""
    assert isinstance(setup.mailbox, Mailbox)
    setup.mailbox.restore()
    watcher = ExceptionWatcher()
    session = Pop3Session(setup.runtime, fresh_services(setup.services), client,
                          log=watcher.log("pop3"))
    sent = converse(session, watcher, data, sizes, ending)
    for item in sent:
        if item.startswith((b"+OK", b"-ERR", b"+ ")):
            assert item.endswith(b"\r\n") and item.count(b"\r\n") == 1, item
        else:                                    # a multi-line body follows its +OK
            assert item.endswith(b".\r\n") and (item == b".\r\n" or item.endswith(b"\r\n.\r\n"))
    return sent


@settings(max_examples=300, deadline=None)
@given(client=clients, data=conversation(), sizes=piece_sizes, ending=st.sampled_from(ENDINGS))
def test_any_input_however_split_gets_the_same_answers(setup, client, data, sizes, ending):
    whole = talk(setup, client, data, [len(data) or 1], ending)
    assert talk(setup, client, data, [1], ending) == whole          # byte by byte
    assert talk(setup, client, data, sizes, ending) == whole


@settings(max_examples=150, deadline=None)
@given(client=clients, data=st.binary(max_size=300), ending=st.sampled_from(ENDINGS))
def test_arbitrary_bytes_get_ok_or_err(setup, client, data, ending):
    talk(setup, client, data, [len(data) or 1], ending)
    talk(setup, client, data, [1], ending)
