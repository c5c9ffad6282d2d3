"""The POP3 side of the real server (`mailbox_appliance.py serve`) driven by real
clients over 127.0.0.1: poplib, raw sockets and curl.

Mail gets into the mailboxes the way it does in life: through the server's own
SMTP listener (smtplib), or as files another program writes into the Maildir.
Every size, UID and byte that POP3 hands out is checked against what RETR
really sends (DESIGN.md section 6, "POP3").
"""

from __future__ import annotations

import base64
import os
import poplib
import re
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from ..helpers.clients import Pop3Client, pop3_client, pop3_login, submit
from ..helpers.ini import PASSWORD
from ..helpers.logs import log_events, settled_log
from ..helpers.mail import SENDER, content_of, message
from ..helpers.net import HOST, TIMEOUT
from ..helpers.server import ServerProcess
from ..helpers.tls import client_context
from ..helpers.waiting import wait_until

LISTEN = {"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0", "pop3s": "127.0.0.1:0"}
CURL = "/usr/bin/curl"
UID_CHARS = re.compile(r"^[\x21-\x7e]{1,70}$")     # RFC 1939 7


# ---------------------------------------------------------------- helpers

@pytest.fixture
def start(servers, certificate):
    """start(**options) -> a running server with SMTP, POP3 and POP3S on loopback."""
    def run(name: str = "server", **options) -> ServerProcess:
        return servers(name=name, listen=dict(LISTEN), tls=certificate, **options)
    return run


def send(server: ServerProcess, data: bytes, to: str = "alice@example.org") -> None:
    """Deliver through the server's SMTP listener; smtplib does the dot-stuffing."""
    submit(server.port("smtp"), SENDER, [to], data, mail_options=("BODY=8BITMIME",))


def login_when_free(server: ServerProcess, user: str = "alice",
                    seconds: float = 10.0) -> poplib.POP3:
    """Log in, retrying while the server has not yet noticed that a dropped
    connection is gone (its lock is released when it reads EOF)."""
    def attempt() -> poplib.POP3 | None:
        client = pop3_client(server.port("pop3"))
        client.user(user)
        try:
            client.pass_(PASSWORD)
            return client
        except poplib.error_proto as error:
            client.close()
            if not error.args[0].startswith(b"-ERR [IN-USE]"):
                raise
            return None
    return wait_until(attempt, seconds, interval=0.1, what=f"{user}'s mailbox free again")


def refusal(call, *args) -> bytes:
    """The -ERR line a poplib call raised (fails when the server said +OK)."""
    with pytest.raises(poplib.error_proto) as caught:
        call(*args)
    return caught.value.args[0]


def octets(lines: list[bytes]) -> int:
    """What the server sent for these lines: CRLF after each, before byte-stuffing
    (poplib has already removed both)."""
    return sum(len(line) + 2 for line in lines)


def as_bytes(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def listing(client: poplib.POP3) -> dict[int, int]:
    """LIST as {number: size}."""
    _, lines, _ = client.list()
    return {int(n): int(s) for n, s in (line.split() for line in lines)}


def uids(client: poplib.POP3) -> dict[int, str]:
    _, lines, _ = client.uidl()
    return {int(n): u.decode("ascii") for n, u in (line.split() for line in lines)}


def stat(client: poplib.POP3) -> tuple[int, int]:
    return client.stat()


def raw_pop3(server: ServerProcess, kind: str = "pop3") -> Pop3Client:
    """A raw connection to a POP3 listener, past its +OK greeting."""
    client = Pop3Client(server.port(kind))
    client.greeting()
    return client


def write_foreign(server: ServerProcess, name: str, data: bytes, sub: str = "new") -> Path:
    """A message file as another program (an MDA, Dovecot) would write it."""
    folder = server.maildir("alice", sub)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = server.maildir("alice", "tmp") / name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.rename(tmp, path)
    return path


def files(server: ServerProcess, sub: str, mailbox: str = "alice") -> list[str]:
    return [path.name for path in server.maildir_files(mailbox, sub)]


# ---------------------------------------------------------------- sizes and content

def test_list_sizes_are_the_octets_retr_sends(start):
    server = start()
    big = [f"{n:07d} " + "x" * 90 for n in range(10_800)]           # about 1 MB
    sent = [
        message("plain", "Hello Alice,", "", "see you.", "-- ", "B."),
        message("dots", ".", "..", ".leading dot", "...three", "a line", "."),
        message("8bit", "Grüße aus Köln – ½ € ✓", "日本語のテキスト", "ünïcödé"),
        b"From: <x@example.com>\r\nSubject: no final newline\r\n\r\nlast line",
        message("big", *big),
        message("long line", "y" * 998, "", "z" * 997),
    ]
    for data in sent:
        send(server, data)
    assert len(files(server, "new")) == len(sent)

    client = pop3_login(server.port("pop3"))
    count, total = stat(client)
    sizes = listing(client)
    assert count == len(sent) and sorted(sizes) == list(range(1, len(sent) + 1))
    assert total == sum(sizes.values())
    subjects = set()
    for number, size in sizes.items():
        _, lines, _ = client.retr(number)
        assert octets(lines) == size, f"message {number}: LIST {size}, RETR {octets(lines)}"
        assert client.list(number).split() == \
            [b"+OK", str(number).encode(), str(size).encode()]
        subject = next(line for line in lines if line.startswith(b"Subject: "))
        subjects.add(subject)
        if subject == b"Subject: big":
            assert size > 1_000_000
        if subject == b"Subject: no final newline":
            assert lines[-1] == b"last line"      # the missing final newline became CRLF
    assert {b"Subject: big", b"Subject: no final newline"} <= subjects and len(subjects) == 6
    client.quit()


def test_sizes_of_files_written_by_another_program(start):
    server = start()
    send(server, message("via smtp", "body"))
    crlf = b"From: a@example.com\r\nSubject: crlf\r\n\r\nline one\r\n.dot line\r\n\r\nend\r\n"
    lf = b"From: a@example.com\nSubject: lf\n\nline one\n.\n..two dots\nend\n"
    mixed = b"From: a@example.com\r\nSubject: mixed\n\r\nCRLF line\r\nLF line\n.x\r\nno end"
    # CRLF pairs split across the server's 256 KB read chunks and 1 MB count chunks
    straddle = bytearray(b"Subject: straddle\r\n\r\n")
    while len(straddle) < (1 << 20) + 100:
        straddle += b"." + b"s" * 70 + b"\r\n"
    for boundary in (256 * 1024, 512 * 1024, 1 << 20):
        straddle[boundary - 1:boundary + 1] = b"\r\n"
        straddle[boundary + 1:boundary + 2] = b"."
    foreign = {
        "1700000001.M1P1.otherhost": crlf,
        "1700000002.M2P1.otherhost": lf,
        "1700000003.M3P1.otherhost": mixed,
        "1700000004.M4P1.otherhost": bytes(straddle),
    }
    for name, data in foreign.items():
        write_foreign(server, name, data)
    write_foreign(server, "1700000005.M5P1.otherhost:2,S", lf.replace(b"lf", b"in cur"),
                  sub="cur")

    client = pop3_login(server.port("pop3"))
    count, total = stat(client)
    sizes = listing(client)
    assert count == 6 and total == sum(sizes.values())
    bodies = {}
    for number, size in sizes.items():
        _, lines, _ = client.retr(number)
        assert octets(lines) == size, f"message {number}: LIST {size}, RETR {octets(lines)}"
        subject = next(line for line in lines if line.startswith(b"Subject: "))
        bodies[subject[9:].decode()] = as_bytes(lines)
    assert sorted(bodies) == ["crlf", "in cur", "lf", "mixed", "straddle", "via smtp"]
    assert bodies["crlf"] == crlf
    assert bodies["lf"] == lf.replace(b"\n", b"\r\n")
    assert bodies["mixed"] == \
        mixed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    assert bodies["straddle"] == bytes(straddle)
    client.quit()


def test_smtp_message_round_trips_byte_identical(start):
    server = start()
    sent = message("round trip",
                   "First line.",
                   ".", "..", ".leading dot", "...", ". space after dot",
                   "",
                   "trailing spaces   ", "\ttab first",
                   "UTF-8: Grüße, ½ €",
                   "x" * 998,
                   "From the start of a line",
                   "end.")
    send(server, sent)
    client = pop3_login(server.port("pop3"))
    _, lines, _ = client.retr(1)
    assert content_of(as_bytes(lines)) == sent
    client.quit()
    # the stored file also holds the dotted lines once (no stuffing left on disk)
    stored = server.messages("alice")[0]
    assert b"\n.leading dot\n" in stored and b"\n..\n" in stored and b"\r" not in stored


def test_top(start):
    server = start()
    send(server, message("top", "body 1", ".body 2 with a dot", "body 3", "body 4"))
    write_foreign(server, "1700000001.M1P1.otherhost",
                  b"Subject: foreign\r\nX-Two: 2\r\n\r\n.one\r\ntwo\r\nthree\r\n")
    client = pop3_login(server.port("pop3"))
    foreign = None
    for number in (1, 2):
        _, whole, _ = client.retr(number)
        if b"Subject: foreign" in whole:
            foreign = number
        blank = whole.index(b"")
        _, top0, _ = client.top(number, 0)
        assert top0 == whole[:blank + 1] and top0[-1] == b""
        _, top2, _ = client.top(number, 2)
        assert top2 == whole[:blank + 3]
        assert len(top2) == len(top0) + 2
        _, top_all, _ = client.top(number, 100)
        assert top_all == whole
    _, top2, _ = client.top(foreign, 2)
    assert top2 == [b"Subject: foreign", b"X-Two: 2", b"", b".one", b"two"]
    for bad in (("3", 0), ("1", "x"), ("0", 1)):
        assert refusal(client.top, *bad).startswith(b"-ERR")
    client.quit()


def test_curl_retrieves_what_poplib_retrieves(start):
    server = start()
    send(server, message("for curl", ".dot line", "..", "Grüße", "", "end"))
    send(server, message("second", "two"))
    client = pop3_login(server.port("pop3"))
    _, lines, _ = client.retr(1)
    sizes = listing(client)
    client.quit()
    port = server.port("pop3")
    fetched = subprocess.run(
        [CURL, "-s", "-S", "--max-time", "20", f"pop3://{HOST}:{port}/1",
         "-u", f"alice:{PASSWORD}"], capture_output=True, timeout=TIMEOUT + 10)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == as_bytes(lines)
    listed = subprocess.run(
        [CURL, "-s", "-S", "--max-time", "20", f"pop3://{HOST}:{port}/",
         "-u", f"alice:{PASSWORD}"], capture_output=True, timeout=TIMEOUT + 10)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().split() == \
        [str(v) for n, s in sorted(sizes.items()) for v in (n, s)]


# ---------------------------------------------------------------- UIDL

def test_uidl_stable_across_sessions_and_a_restart(start):
    server = start()
    for n in range(3):
        send(server, message(f"uid {n}", "x"))
    write_foreign(server, "1700000001.M1P1.otherhost", b"Subject: f\n\nx\n")
    write_foreign(server, "1700000002." + "h" * 90 + ",S=14", b"Subject: g\n\ny\n")
    write_foreign(server, "1700000003.M3P1.other host", b"Subject: h\n\nz\n")

    client = pop3_login(server.port("pop3"))
    first = uids(client)
    assert len(first) == 6 and len(set(first.values())) == 6
    for number, uid in first.items():
        assert UID_CHARS.match(uid), uid
        assert client.uidl(number).split() == [b"+OK", str(number).encode(), uid.encode()]
    for number in first:
        client.retr(number)            # moves everything to cur/ with the Seen flag at QUIT
    client.quit()
    assert files(server, "new") == [] and len(files(server, "cur")) == 6

    client = pop3_login(server.port("pop3"))
    assert uids(client) == first
    client.quit()

    server.stop()
    server.start()
    client = pop3_login(server.port("pop3"))
    assert uids(client) == first
    assert client.dele(2).startswith(b"+OK")
    assert uids(client) == {n: u for n, u in first.items() if n != 2}
    client.quit()
    send(server, message("after restart", "x"))
    client = pop3_login(server.port("pop3"))
    after = uids(client)
    kept = [u for n, u in first.items() if n != 2]
    assert [u for u in after.values() if u in kept] == kept
    assert len(set(after.values())) == 6
    client.quit()


# ---------------------------------------------------------------- deletion and flags

def test_dele_rset_quit_and_dropped_connection(start):
    server = start()
    for n in range(3):
        send(server, message(f"m{n}", "body"))
    names = files(server, "new")
    assert len(names) == 3

    client = pop3_login(server.port("pop3"))
    assert client.dele(1).startswith(b"+OK")
    assert stat(client)[0] == 2
    assert refusal(client.retr, 1).startswith(b"-ERR")
    assert client.rset().startswith(b"+OK")
    assert stat(client)[0] == 3
    client.quit()
    assert files(server, "new") == names

    client = pop3_login(server.port("pop3"))                       # DELE, then the connection drops
    client.dele(1)
    client.dele(2)
    client.retr(3)
    client.sock.close()
    client.file.close()
    client = login_when_free(server)
    assert stat(client)[0] == 3
    client.quit()
    assert files(server, "new") == names and files(server, "cur") == []

    client = pop3_login(server.port("pop3"))                  # DELE + QUIT deletes; RETR marks Seen
    deleted_uid = client.uidl(2).split()[2].decode()
    seen_uid = client.uidl(3).split()[2].decode()
    client.dele(2)
    _, kept, _ = client.retr(3)
    assert client.quit().startswith(b"+OK")
    assert len(files(server, "new")) == 1
    seen_name = next(n for n in names if n.split(",")[0] == seen_uid)
    assert files(server, "cur") == [seen_name + ":2,S"]
    assert not any(n.split(",")[0] == deleted_uid
                   for n in files(server, "new") + files(server, "cur"))
    assert (server.maildir("alice", "cur") / files(server, "cur")[0]).read_bytes() == \
        as_bytes(kept).replace(b"\r\n", b"\n")

    client = pop3_login(server.port("pop3"))
    assert stat(client)[0] == 2
    _, lines, _ = client.retr(2)
    assert lines == kept
    client.quit()

    server.wait_for_log("deleted=1")
    quits = log_events(settled_log(server), "quit")
    assert len(quits) == 4, quits                  # the dropped session is no quit
    assert (quits[2]["retrieved"], quits[2]["deleted"], quits[2]["user"]) == ("1", "1", "alice")
    assert (quits[0]["retrieved"], quits[0]["deleted"]) == ("0", "0")        # DELE + RSET


def test_snapshot_mail_arriving_during_a_session_waits_for_next_login(start):
    server = start()
    send(server, message("before", "x"))
    client = pop3_login(server.port("pop3"))
    before = stat(client)
    send(server, message("during", "y"))
    assert len(files(server, "new")) == 2
    assert stat(client) == before and list(listing(client)) == [1]
    assert refusal(client.retr, 2).startswith(b"-ERR")
    client.quit()
    client = pop3_login(server.port("pop3"))
    assert stat(client)[0] == 2
    subjects = [line for n in (1, 2) for line in client.top(n, 0)[1]
                if line.startswith(b"Subject: ")]
    assert sorted(subjects) == [b"Subject: before", b"Subject: during"]
    client.quit()


def test_messages_are_numbered_oldest_first(start):
    """Message numbers follow arrival: the Maildir name's seconds, then its
    microseconds (`M<usec>`, not zero-padded by the Maildir convention, so
    M99999 is older than M100000). Clients without UIDL rely on new mail
    coming last."""
    server = start()
    names = ["1700000000.M5P1Q1.otherhost", "1700000000.M99999P1Q2.otherhost",
             "1700000000.M100000P1Q3.otherhost", "1700000000.M900000P1Q4.otherhost",
             "1700000001.M1P1Q5.otherhost"]
    for number, name in enumerate(names, start=1):
        write_foreign(server, name, b"Subject: %d\n\nx\n" % number)
    send(server, message("6", "newest"))
    client = pop3_login(server.port("pop3"))
    order = [line for n in range(1, 7) for line in client.top(n, 0)[1]
             if line.startswith(b"Subject: ")]
    assert order == [b"Subject: %d" % n for n in range(1, 7)]
    client.quit()


# ---------------------------------------------------------------- locking

def test_second_login_is_refused_and_the_first_keeps_working(start):
    server = start()
    send(server, message("locked", "body"))
    send(server, message("for bhayden", "b"), to="bhayden@example.org")
    first = pop3_login(server.port("pop3"))

    second = pop3_client(server.port("pop3"))
    second.user("alice")
    answer = refusal(second.pass_, PASSWORD)
    assert answer.startswith(b"-ERR [IN-USE]"), answer
    other = pop3_login(server.port("pop3"), "bhayden")                # another mailbox: no conflict
    assert stat(other)[0] == 1
    other.quit()

    assert stat(first)[0] == 1
    _, lines, _ = first.retr(1)
    assert b"Subject: locked" in lines
    assert first.noop().startswith(b"+OK")
    first.quit()

    second.user("alice")                              # same connection, now free
    assert second.pass_(PASSWORD).startswith(b"+OK")
    assert stat(second)[0] == 1
    second.quit()


# ---------------------------------------------------------------- TLS

def test_stls_and_pop3s(start, certificate):
    server = start()
    send(server, message("secret", "tls body"))
    context = client_context(certificate[0])

    client = pop3_client(server.port("pop3"))
    caps = client.capa()
    assert "STLS" in caps and "USER" in caps and "SASL" in caps   # loopback: plaintext ok
    assert client.stls(context).startswith(b"+OK")
    assert isinstance(client.sock, ssl.SSLSocket)
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps and caps.get("SASL") == ["PLAIN"]
    assert refusal(client._shortcmd, "STLS").startswith(b"-ERR")
    client.user("alice")
    assert client.pass_(PASSWORD).startswith(b"+OK")
    _, lines, _ = client.retr(1)
    assert b"tls body" in lines
    client.quit()

    client = pop3_client(server.port("pop3"))             # USER before STLS is forgotten (RFC 2595)
    client.user("alice")
    client.stls(context)
    assert refusal(client.pass_, PASSWORD).startswith(b"-ERR")
    client.quit()

    # commands pipelined behind STLS are dropped, not run inside TLS (CVE-2011-0411)
    with raw_pop3(server) as raw:
        raw.send(b"STLS\r\nCAPA\r\n")
        assert raw.line().startswith(b"+OK")
        raw.starttls(context, hostname=HOST)        # nothing may have come after the +OK
        assert raw.ask(b"NOOP").startswith(b"-ERR")                  # not logged in
        assert raw.ask(b"QUIT").startswith(b"+OK")

    secure = pop3_client(server.port("pop3s"), context=context)
    caps = secure.capa()
    assert "STLS" not in caps and "USER" in caps
    assert refusal(secure._shortcmd, "STLS").startswith(b"-ERR")
    secure.user("Alice@Example.ORG")
    assert secure.pass_(PASSWORD).startswith(b"+OK")
    assert stat(secure)[0] == 1
    secure.quit()


def test_plaintext_auth_never(start, certificate):
    server = start(plaintext_auth="never")
    send(server, message("never", "x"))
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()

    client = pop3_client(server.port("pop3"))
    caps = client.capa()
    assert "USER" not in caps and "SASL" not in caps and "STLS" in caps
    assert refusal(client.user, "alice").startswith(b"-ERR [AUTH]")
    assert refusal(client.pass_, PASSWORD).startswith(b"-ERR [AUTH]")
    assert refusal(client._shortcmd, f"AUTH PLAIN {token}").startswith(b"-ERR [AUTH]")
    assert refusal(client.stat).startswith(b"-ERR")             # not logged in
    client.stls(client_context(certificate[0]))
    assert "USER" in client.capa()
    client.user("alice")
    assert client.pass_(PASSWORD).startswith(b"+OK")
    assert stat(client)[0] == 1
    client.quit()

    secure = pop3_client(server.port("pop3s"), context=client_context(certificate[0]))
    assert secure._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    secure.quit()


# ---------------------------------------------------------------- authentication

def test_auth_plain_wrong_passwords_and_logging(start):
    server = start()
    send(server, message("auth", "x"))
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    with_authzid = base64.b64encode(f"alice\0alice\0{PASSWORD}".encode()).decode()
    wrong = "wrong battery staple"

    client = pop3_client(server.port("pop3"))                                    # initial response
    assert client._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    client.retr(1)
    assert client.quit().startswith(b"+OK")

    client = pop3_client(server.port("pop3"))                                    # two steps
    assert client._shortcmd("AUTH PLAIN").startswith(b"+")
    assert client._shortcmd(with_authzid).startswith(b"+OK")
    assert stat(client)[0] == 1
    client.dele(1)
    client.rset()
    client.quit()

    client = pop3_client(server.port("pop3"))                              # cancelled, then garbage
    client._shortcmd("AUTH PLAIN")
    assert refusal(client._shortcmd, "*").startswith(b"-ERR")
    assert refusal(client._shortcmd, "AUTH PLAIN %%%notbase64").startswith(b"-ERR")
    assert refusal(client._shortcmd, "AUTH CRAM-MD5").startswith(b"-ERR")
    client.user("alice")
    wrong_password = refusal(client.pass_, wrong)
    assert wrong_password.startswith(b"-ERR [AUTH]")
    client.user("nobody")
    assert refusal(client.pass_, PASSWORD) == wrong_password    # no hint the user is unknown
    bad_token = base64.b64encode(f"\0alice\0{wrong}".encode()).decode()
    assert refusal(client._shortcmd, f"AUTH PLAIN {bad_token}") == wrong_password
    client.user("alice@example.org")                            # name@domain works
    assert client.pass_(PASSWORD).startswith(b"+OK alice")
    client.quit()

    server.wait_for_log("event=quit")
    log = settled_log(server)
    logins = log_events(log, "login")
    assert len(logins) == 3 and all(e["user"] == "alice" for e in logins)
    quits = log_events(log, "quit")
    assert any(e["retrieved"] == "1" and e["deleted"] == "0" for e in quits), quits
    failures = log_events(log, "login_failed")
    assert len(failures) == 3, failures
    assert all(e.get("reason") for e in failures)
    assert any(e.get("user") == "nobody" for e in failures)
    for secret in (PASSWORD, wrong, token, with_authzid, bad_token, "horse", "battery"):
        assert secret not in log, f"{secret!r} is in the log"


def test_lockout_after_auth_failures(start):
    server = start(limits="auth_failures = 3/1m\n")
    client = pop3_client(server.port("pop3"))
    for _ in range(3):
        client.user("alice")
        assert refusal(client.pass_, "wrong").startswith(b"-ERR [AUTH]")
    client.user("alice")
    assert refusal(client.pass_, PASSWORD).startswith(b"-ERR [SYS/TEMP]")
    client.quit()
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    client = pop3_client(server.port("pop3"))                     # a new connection changes nothing
    assert refusal(client._shortcmd, f"AUTH PLAIN {token}").startswith(b"-ERR [SYS/TEMP]")
    client.quit()


def test_undecodable_user_name_is_logged_and_loses_no_log_lines(start):
    """A client may send any bytes as a name; the failed login is still logged,
    and so is everything else written at the same moment."""
    server = start()
    with raw_pop3(server) as raw:
        assert raw.ask(b"USER \xff\xfebad\xc3").startswith(b"+OK")
        assert raw.ask(b"PASS nope").startswith(b"-ERR [AUTH]")
        assert raw.ask(b"QUIT").startswith(b"+OK")
    pop3_login(server.port("pop3")).quit()
    server.wait_for_log("event=quit")
    log = settled_log(server)
    assert "event=started" in log
    failures = log_events(log, "login_failed")
    assert len(failures) == 1 and "user" in failures[0], failures
    assert len(log_events(log, "connect")) == 2
    assert "nope" not in log


# ---------------------------------------------------------------- commands and states

def test_wrong_state_and_bad_commands(start):
    server = start()
    send(server, message("state", "x"))
    with raw_pop3(server) as raw:
        for command in (b"STAT", b"LIST", b"RETR 1", b"UIDL", b"TOP 1 0", b"DELE 1",
                        b"RSET", b"NOOP", b"PASS " + PASSWORD.encode()):
            assert raw.ask(command).startswith(b"-ERR"), command
        assert raw.ask(b"XYZZY").startswith(b"-ERR")
        assert raw.ask(b"NOOP " + b"n" * 300).startswith(b"-ERR")        # 306 octets
        assert raw.ask(b"USER al\0ice").startswith(b"-ERR")
        assert raw.ask(b"USER alice").startswith(b"+OK")                 # still alive
        assert raw.ask(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
        for command in (b"USER alice", b"PASS " + PASSWORD.encode(), b"STLS",
                        b"AUTH PLAIN", b"XYZZY", b"RETR 2", b"RETR 0", b"RETR x",
                        b"LIST 9", b"DELE 7", b"TOP 1"):
            assert raw.ask(command).startswith(b"-ERR"), command
        assert raw.ask(b"LIST " + b"1" * 300).startswith(b"-ERR")
        assert raw.ask(b"ST\0AT").startswith(b"-ERR")
        assert re.match(rb"\+OK 1 \d+$", raw.ask(b"STAT"))
        assert raw.ask(b"CAPA").startswith(b"+OK")
        caps = raw.multi()
        assert b"STLS" not in caps and b"UIDL" in caps and b"TOP" in caps
        assert raw.ask(b"QUIT").startswith(b"+OK")
        assert raw.line() is None                 # and the server closes


def test_non_ascii_digits_in_message_numbers(start):
    """'²' is a digit to str.isdigit() but not to int(): a message number must be
    ASCII digits, anything else an -ERR, never a dropped connection."""
    server = start()
    send(server, message("digits", "x"))
    with raw_pop3(server) as raw:
        assert raw.ask(b"USER alice").startswith(b"+OK")
        assert raw.ask(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
        for command in ("RETR \u00b2", "TOP 1 \u00b2", "TOP \u00b2 1", "DELE \u00b2",
                        "LIST \u00b2", "UIDL \u00b2"):
            answer = raw.ask(command.encode("utf-8"))
            assert answer is not None and answer.startswith(b"-ERR"), (command, answer)
        assert raw.ask(b"STAT").startswith(b"+OK 1 ")
        assert raw.ask(b"QUIT").startswith(b"+OK")
    assert "handler_crashed" not in settled_log(server)


def test_pipelined_commands(start):
    """CAPA says PIPELINING (RFC 2449 6.6): a batch of commands in one write is
    answered in order."""
    server = start()
    send(server, message("pipe", ".dot", "body"))
    with raw_pop3(server) as raw:
        raw.send(b"CAPA\r\nUSER alice\r\nPASS " + PASSWORD.encode() +
                 b"\r\nSTAT\r\nLIST\r\nRETR 1\r\nUIDL 1\r\nDELE 1\r\nRSET\r\nQUIT\r\n")
        assert raw.line().startswith(b"+OK")
        assert b"PIPELINING" in raw.multi()
        assert raw.line().startswith(b"+OK")          # USER
        assert raw.line().startswith(b"+OK")          # PASS
        count, size = raw.line().split()[1:3]         # STAT
        assert count == b"1"
        assert raw.line().startswith(b"+OK")
        assert raw.multi() == [b"1 " + size]
        assert raw.line().startswith(b"+OK")
        body = raw.multi()
        assert b"..dot" in body                          # still stuffed on the wire
        assert sum(len(line) + 2 for line in body) - 1 == int(size)
        assert raw.line().startswith(b"+OK 1 ")       # UIDL 1
        assert raw.line().startswith(b"+OK")          # DELE
        assert raw.line().startswith(b"+OK")          # RSET
        assert raw.line().startswith(b"+OK")          # QUIT
        assert raw.line() is None
    assert len(files(server, "cur")) == 1


# ---------------------------------------------------------------- timeout and shutdown

def test_idle_session_times_out_and_deletes_nothing(start, certificate):
    server = start(limits="command_timeout = 2s\n")
    send(server, message("idle", "x"))
    names = files(server, "new")
    send(server, message("idle too", "y"), to="bhayden@example.org")
    secure = pop3_login(server.port("pop3s"), "bhayden", context=client_context(certificate[0]))
    assert secure.dele(1).startswith(b"+OK")
    client = pop3_login(server.port("pop3"))
    assert client.dele(1).startswith(b"+OK")
    began = time.monotonic()
    for idle in (client, secure):
        idle.sock.settimeout(10)
        line = idle.file.readline()
        waited = time.monotonic() - began
        assert line.startswith(b"-ERR"), line
        assert waited <= 5, waited
        assert idle.file.readline() == b""               # closed
        idle.close()
    assert time.monotonic() - began >= 1.5
    assert files(server, "new") == names
    assert len(files(server, "new", "bhayden")) == 1
    again = login_when_free(server)
    assert stat(again)[0] == 1
    again.quit()


def test_shutdown_during_a_session_deletes_nothing(start, certificate):
    server = start(limits="shutdown_grace = 1s\n")
    send(server, message("shutdown", "x"))
    names = files(server, "new")
    send(server, message("shutdown too", "y"), to="bhayden@example.org")
    secure = pop3_login(server.port("pop3s"), "bhayden", context=client_context(certificate[0]))
    assert secure.dele(1).startswith(b"+OK")
    client = pop3_login(server.port("pop3"))
    assert client.dele(1).startswith(b"+OK")
    began = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - began < 15
    for open_session in (client, secure):
        open_session.sock.settimeout(5)
        line = open_session.file.readline()
        assert line.startswith(b"-ERR"), line
        open_session.close()
    assert files(server, "new") == names
    assert len(files(server, "new", "bhayden")) == 1
    server.start()
    for mailbox in ("alice", "bhayden"):
        again = pop3_login(server.port("pop3"), mailbox)
        assert stat(again)[0] == 1
        again.quit()
