"""Fuzz: whatever bytes a client sends, however TCP splits them and wherever
literals fall, the IMAP engine never fails (no exception, none logged by its
catch-alls), answers only with well-formed responses (untagged, continuation
or tagged OK/NO/BAD, literals exactly as long as announced), and answers the
same for the same bytes over the same mailbox."""

from __future__ import annotations

import base64
import re
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.imap.session import ImapSession
from lib.session.engine import ClientInfo
from lib.session.runtime import Services, load_runtime
from lib.store.folders import MailStore

from ..support import PASSWORD
from .drive import ENDINGS, TLS, ExceptionWatcher, Setup, cheap_hash, converse, fresh_services

CONFIG = """
[server]
hostname = mail.example.org
data_dir = data
log = stderr

[limits]
max_message_size = 4K

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
LOGIN = f'a0 LOGIN alice "{PASSWORD}"\r\n'.encode()
APPENDED = b"Subject: appended\r\n\r\nhello again\r\n"
# Every conversation sends each of these once, in an order hypothesis picks, so
# every command handler runs in every example, in whatever state it finds.
COMMANDS = [
    "c1 CAPABILITY", "c2 NOOP", f'c3 LOGIN alice "{PASSWORD}"', "c4 LOGIN alice wrong",
    f"c5 AUTHENTICATE PLAIN {TOKEN}", "c6 ID NIL", "c7 ENABLE IMAP4rev2", "c8 NAMESPACE",
    "c9 SELECT INBOX", "d1 EXAMINE INBOX", "d2 SELECT Trash", "d3 CREATE Work.Sub",
    "d4 DELETE Work", "d5 RENAME Work Play", "d6 SUBSCRIBE Work", "d7 UNSUBSCRIBE Sent",
    'd8 LIST "" *', 'd9 LIST (SPECIAL-USE) "" * RETURN (STATUS (MESSAGES UNSEEN))',
    'e1 LSUB "" %', "e2 STATUS INBOX (MESSAGES UNSEEN SIZE UIDNEXT RECENT DELETED)",
    f'e3 APPEND INBOX (\\Seen) "05-Mar-2024 14:30:00 +0100" {{{len(APPENDED)}+}}\r\n'
    + APPENDED.decode(),
    "e4 FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)",
    "e5 FETCH 1 BODY[]", "e6 UID FETCH 1:* (BODY.PEEK[1] BINARY.PEEK[2] BODY[2.MIME])",
    "e7 FETCH 2 (BODY.PEEK[HEADER.FIELDS (Subject)]<0.10> BODY[TEXT]<3.7>)",
    "e8 STORE 1 +FLAGS (\\Deleted)", "e9 UID STORE 2 FLAGS.SILENT (\\Seen \\Flagged)",
    "f1 SEARCH TEXT hello", "f2 UID SEARCH RETURN (MIN COUNT SAVE) UNSEEN", "f3 FETCH $ FLAGS",
    "f4 SEARCH OR FROM ann (SINCE 1-Jan-2020 NOT DELETED) LARGER 10", "f5 COPY 1:2 Trash",
    "f6 MOVE 2 Junk", "f7 EXPUNGE", "f8 UID EXPUNGE 1:3", "f9 CLOSE", "g1 UNSELECT",
    "g2 IDLE", "g3 STARTTLS", "g4 FETCH 1:* BODY.PEEK[]<0.5>", "g5 APPEND Nowhere {3}",
]
# ... and some of these, which end the session or continue another command
EXTRAS = ["DONE", "*", TOKEN, "g6 LOGOUT", "g7 LOGIN {5}", "alice {3+}", "abc",
          "g8 APPEND INBOX {9999999+}", "g9 AUTHENTICATE PLAIN"]
line_ending = st.sampled_from([b"\r\n", b"\n"])
extra = st.builds(lambda verb, end: verb.encode() + end, st.sampled_from(EXTRAS), line_ending)
garbage = st.builds(lambda data, end: data.replace(b"\n", b"") + end,
                    st.binary(max_size=60), line_ending)
literal = st.builds(lambda head, data, plus, end: head + b" {%d%s}\r\n" % (len(data), plus) +
                    data + end, st.sampled_from([b"h1 LOGIN alice", b"h2 SELECT", b"h3 APPEND x",
                                                 b"h4 SEARCH TEXT", b"h5 NOOP"]),
                    st.binary(max_size=40), st.sampled_from([b"", b"+"]), line_ending)
long_line = st.sampled_from([b"L " * 40_000 + b"\r\n", b"a NOOP " + b"x" * 70_000 + b"\r\n"])


@st.composite
def conversation(draw) -> bytes:
    items = [verb.encode() + draw(line_ending) for verb in COMMANDS]
    items += draw(st.lists(st.one_of(extra, extra, garbage, literal, long_line), max_size=6))
    # Half the conversations log in and select first, so the mailbox commands find one.
    first = draw(st.sampled_from([b"", LOGIN + b"a1 SELECT INBOX\r\n"]))
    return first + b"".join(draw(st.permutations(items)))


clients = st.sampled_from([ClientInfo("127.0.0.1", 1, "imap"),
                           ClientInfo("192.0.2.9", 1, "imap"),
                           ClientInfo("192.0.2.9", 1, "imaps", TLS)])
piece_sizes = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8)


class Mailbox:
    """alice's Maildir with three messages, its folders and UID lists, put back
    file for file (times included) before each conversation."""

    def __init__(self, setup_runtime, services: Services):
        store = services.store
        self.root = store.path("alice")
        store.deliver(["alice"], b"From: Ann <ann@example.net>\nSubject: one\n\nhello\n")
        store.deliver(["alice"], b"Subject: two\nContent-Type: multipart/mixed; boundary=b\n\n"
                                 b"--b\n\nfirst\n--b\nContent-Transfer-Encoding: base64\n\n"
                                 b"aGVsbG8=\n--b--\n")
        (self.root / "new" / "1700000000.M1P1.other.host").write_bytes(
            b"Subject: three\r\n\r\n..no final newline")
        session = ImapSession(setup_runtime, services, ClientInfo("127.0.0.1", 1, "imap"))
        session.greeting()
        session.feed_line(LOGIN)                     # makes the special folders
        session.feed_line(b"a1 STATUS INBOX (MESSAGES)\r\n")     # and the UID list
        session.close()
        self.saved = self.root.parent / "alice.saved"
        shutil.copytree(self.root, self.saved, symlinks=True)

    def restore(self) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(self.saved, self.root, symlinks=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, certificate):
    path = tmp_path_factory.mktemp("imapfuzz") / "fuzz.ini"
    path.write_text(CONFIG.format(cert=certificate[0], key=certificate[1],
                                  hash=cheap_hash(PASSWORD)))
    runtime = load_runtime(path)
    services = Services.create(runtime.config)
    return Setup(runtime, services, Mailbox(runtime, services))


_LITERAL_END = re.compile(rb"~?\{(\d+)\}\Z")
_FIRST = re.compile(rb"(\* |\+ |[^ \r\n]+ (OK|NO|BAD)( |\r))")
_NEW_VALIDITY = re.compile(rb"(UIDVALIDITY|APPENDUID|COPYUID) \d+")


def well_formed(stream: bytes) -> None:
    """Every response starts as IMAP says, and every literal is as long as announced."""
    pos = 0
    while pos < len(stream):
        assert _FIRST.match(stream, pos), stream[pos:pos + 80]
        while True:
            end = stream.find(b"\r\n", pos)
            assert end >= 0, stream[pos:pos + 80]
            announced = _LITERAL_END.search(stream, pos, end)
            if announced is None:
                pos = end + 2
                break
            pos = end + 2 + int(announced.group(1))
            assert pos <= len(stream), "a literal shorter than announced"


def talk(setup: Setup, client: ClientInfo, data: bytes, sizes: list[int],
         ending: str) -> bytes:
    """One conversation over a fresh copy of the mailbox; fails on any exception."""
    assert isinstance(setup.mailbox, Mailbox)
    setup.mailbox.restore()
    watcher = ExceptionWatcher()
    session = ImapSession(setup.runtime, fresh_services(setup.services), client,
                          log=watcher.log("imap"), mailstore=MailStore(setup.services.store))
    stream = b"".join(converse(session, watcher, data, sizes, ending))
    well_formed(stream)
    # A folder made during the conversation gets a UIDVALIDITY from the clock.
    return _NEW_VALIDITY.sub(rb"\1 V", stream)


@settings(max_examples=120, deadline=None)
@given(client=clients, data=conversation(), sizes=piece_sizes, ending=st.sampled_from(ENDINGS))
def test_any_input_however_split_gets_the_same_answers(setup, client, data, sizes, ending):
    whole = talk(setup, client, data, [len(data) or 1], ending)
    assert talk(setup, client, data, [1], ending) == whole          # byte by byte
    assert talk(setup, client, data, sizes, ending) == whole


@settings(max_examples=150, deadline=None)
@given(client=clients, data=st.binary(max_size=300), ending=st.sampled_from(ENDINGS))
def test_arbitrary_bytes_get_well_formed_answers(setup, client, data, ending):
    talk(setup, client, data, [len(data) or 1], ending)
    talk(setup, client, data, [1], ending)
