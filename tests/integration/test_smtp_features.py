"""The real server (`mailbox_appliance.py serve`) driven by real clients:
smtplib, raw sockets and swaks, over 127.0.0.1 and ::1 only.

Every reply is checked against the constants in lib/replies.py; every stored
message is checked byte for byte against what the client sent.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import shlex
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

from lib.core import replies
from lib.core.replies import Reply

from ..helpers.clients import SmtpClient, smtplib_client
from ..helpers.ini import PASSWORD
from ..helpers.logs import settled_events, settled_log
from ..helpers.mail import SENDER, message, split_trace, stored_form
from ..helpers.net import HOST, TIMEOUT
from ..helpers.server import ServerProcess, new_server
from ..helpers.tls import client_context
from ..helpers.waiting import wait_until

STRANGER = "192.0.2.0/24"              # trusted networks that do not include 127.0.0.1
REMOTE = "friend@gmail.example"        # relayed: only ever becomes a queue entry
TLS_LISTEN = {"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0",
              "submissions": "127.0.0.1:0"}


# ---------------------------------------------------------------- helpers

def text_of(reply: Reply) -> bytes:
    """What smtplib returns as the message of `reply` (a one-line reply)."""
    return ((f"{reply.enhanced} " if reply.enhanced else "") + reply.text).encode()


def expect(result, reply: Reply) -> None:
    """`result` is smtplib's (code, message): it must be exactly `reply`."""
    assert tuple(result) == (reply.code, text_of(reply)), \
        f"expected {reply}, got {result!r}"


def refusal(error: smtplib.SMTPResponseException) -> tuple[int, bytes]:
    return error.smtp_code, error.smtp_error


def login(s: smtplib.SMTP, user: str, password: str = PASSWORD, mechanism: str = "PLAIN",
          initial_response_ok: bool = True):
    s.ehlo_or_helo_if_needed()
    s.user, s.password = user, password
    method = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login}[mechanism]
    return s.auth(mechanism, method, initial_response_ok=initial_response_ok)


def transaction(s: smtplib.SMTP, sender: str, recipients: list[str], data: bytes,
                options: tuple[str, ...] = ()):
    """MAIL, RCPT (each must be accepted), DATA; return the final reply."""
    s.ehlo_or_helo_if_needed()
    expect(s.mail(sender, list(options)), replies.SENDER_OK)
    for recipient in recipients:
        expect(s.rcpt(recipient), replies.RECIPIENT_OK)
    return s.data(data)


def accepted_id(result) -> str:
    """The id in `250 2.0.0 OK: queued as ID`; fails on any other reply."""
    code, text = result
    prefix = text_of(replies.ACCEPTED.fill(id=""))
    assert code == replies.ACCEPTED.code and text.startswith(prefix), result
    msg_id = text[len(prefix):].decode()
    assert re.fullmatch(r"[0-9A-F]{16}", msg_id), result
    expect(result, replies.ACCEPTED.fill(id=msg_id))
    return msg_id


def deliver(s: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, **kw) -> str:
    return accepted_id(transaction(s, sender, recipients, data, **kw))


def only_message(server: ServerProcess, mailbox: str) -> bytes:
    found = server.messages(mailbox)
    assert len(found) == 1, f"{mailbox} has {len(found)} messages"
    return found[0]


@contextlib.contextmanager
def filter_server(folder: Path, command: str, trusted: str = STRANGER,
                  timeout: str = "1s", **options):
    """A running server with [policy] filter_command set, stopped at the end."""
    server = new_server(folder, trusted=trusted, **options,
                        policy={"filter_command": command, "filter_timeout": timeout})
    try:
        server.start()
        yield server
    finally:
        server.stop()


def script(folder: Path, name: str, body: str) -> str:
    """An executable /bin/sh script; returns the command line for the config."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return shlex.quote(str(path))


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--helo", "swaks.example.com", "--timeout", "20", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


# ---------------------------------------------------------------- 1. local delivery

TRICKY_BODY = (".starts with one dot", "..starts with two dots", ".", "..", "",
               "Grüße ✓ — 8-bit UTF-8", "", "", ". a dot and a space", "last line")


def test_local_delivery_is_byte_for_byte(servers):
    server = servers()
    data = message("dots and 8 bits", *TRICKY_BODY)
    with smtplib_client(server.port()) as s:
        msg_id = deliver(s, SENDER, ["alice@example.org"], data)
    stored = only_message(server, "alice")
    received, rest = split_trace(stored, SENDER)
    assert rest == stored_form(data)
    assert received.startswith(b"Received: from client.example.com ([127.0.0.1])\n")
    assert b"\tby mail.example.org (mailbox_appliance) with ESMTP id " + \
        msg_id.encode() + b"\n" in received
    assert b"\tfor <alice@example.org>; " in received
    assert server.messages("bhayden") == []


def test_ten_megabyte_message_is_stored_exactly_and_named_with_its_sizes(servers):
    server = servers()
    rng = random.Random(1234)
    printable = bytes(range(0x20, 0x7F))
    table = bytes(printable[i % len(printable)] for i in range(256))
    lines, total = [b"Subject: ten megabytes", b""], 0
    while total < 10 * 1024 * 1024:
        line = rng.randbytes(rng.randrange(0, 998)).translate(table)
        lines.append(line)
        total += len(line) + 2
    lines += [b".", b"..", b".end"]
    data = b"\r\n".join(lines) + b"\r\n"
    assert len(data) > 10 * 1024 * 1024
    with smtplib_client(server.port()) as s:
        deliver(s, SENDER, ["alice@example.org"], data)
    files = [p for p in server.maildir("alice", "new").iterdir()]
    assert len(files) == 1
    stored = files[0].read_bytes()
    received, rest = split_trace(stored, SENDER)
    assert rest == stored_form(data)
    match = re.search(r",S=(\d+),W=(\d+)$", files[0].name)
    assert match, files[0].name
    assert int(match.group(1)) == len(stored) == os.path.getsize(files[0])
    assert int(match.group(2)) == len(stored.replace(b"\n", b"\r\n"))


# ---------------------------------------------------------------- 2. recipients

def test_one_copy_per_mailbox_however_many_routes_lead_there(servers):
    server = servers()
    recipients = ["alice@example.org", "bhayden@example.org", "sales@example.net",
                  "BHayden+lists@Example.NET", "anything@example.net"]
    data = message("many routes", "one copy each", to="sales@example.net")
    with smtplib_client(server.port()) as s:
        s.ehlo()
        expect(s.mail(SENDER), replies.SENDER_OK)
        for recipient in recipients:
            expect(s.rcpt(recipient), replies.RECIPIENT_OK)
        expect(s.rcpt("nobody@example.org"), replies.NO_SUCH_USER)
        msg_id = accepted_id(s.data(data))
    alice, bhayden = only_message(server, "alice"), only_message(server, "bhayden")
    assert alice == bhayden
    received, rest = split_trace(alice, SENDER)
    assert rest == stored_form(data)
    assert b"nobody" not in received
    accepted = [e for e in settled_events(server, "accepted") if e.get("msg") == msg_id]
    assert len(accepted) == 1
    assert set(accepted[0]["mailboxes"].split(",")) == {"alice", "bhayden"}
    assert server.queue_entries() == {}


# ---------------------------------------------------------------- 3. relay control

def test_strangers_may_not_relay_but_may_deliver_locally(servers):
    server = servers(trusted=STRANGER)
    data = message("from a stranger", "hello")
    with smtplib_client(server.port()) as s:
        s.ehlo()
        expect(s.mail(SENDER), replies.SENDER_OK)
        expect(s.rcpt(REMOTE), replies.RELAY_DENIED)
        expect(s.rcpt("alice@example.org"), replies.RECIPIENT_OK)
        accepted_id(s.data(data))
    denied = settled_events(server, "relay_denied")
    assert len(denied) == 1
    assert denied[0]["to"] == f"<{REMOTE}>"
    assert denied[0]["client"] == "127.0.0.1"
    assert denied[0]["reason"] == "client neither logged in nor in trusted_networks"
    assert split_trace(only_message(server, "alice"), SENDER)[1] == stored_form(data)
    assert server.queue_entries() == {}


def test_trusted_network_relays_into_the_queue(servers):
    server = servers()
    data = message("relayed", "to the world", to=REMOTE)
    with smtplib_client(server.port()) as s:
        msg_id = deliver(s, SENDER, [REMOTE], data)
    entries = server.queue_entries()
    assert len(entries) == 1
    (queue_id, (queued, envelope)), = entries.items()
    assert envelope["sender"] == SENDER
    assert [(r["address"], r["state"]) for r in envelope["recipients"]] == [(REMOTE, "pending")]
    received, rest = split_trace(queued, return_path=False)
    assert rest == stored_form(data)
    assert b"([127.0.0.1])" in received and b"id " + msg_id.encode() in received
    accepted = [e for e in settled_events(server, "accepted") if e.get("msg") == msg_id]
    assert len(accepted) == 1 and accepted[0].get("queue") == queue_id
    assert "mailboxes" not in accepted[0]
    assert server.messages("alice") == [] and server.messages("bhayden") == []


def test_local_and_remote_recipients_land_in_maildir_and_queue(servers):
    server = servers()
    data = message("both", "local and remote")
    with smtplib_client(server.port()) as s:
        deliver(s, SENDER, ["alice@example.org", REMOTE], data)
    local = only_message(server, "alice")
    received, rest = split_trace(local, SENDER)
    assert rest == stored_form(data)
    entries = server.queue_entries()
    assert len(entries) == 1
    (queued, envelope), = entries.values()
    assert queued == received + rest          # the local copy minus its Return-Path
    assert [r["address"] for r in envelope["recipients"]] == [REMOTE]
    assert all(r["state"] == "pending" for r in envelope["recipients"])
    assert server.messages("bhayden") == []


def test_authenticated_stranger_may_relay_after_starttls(servers, certificate):
    cert, _ = certificate
    server = servers(trusted=STRANGER, tls=certificate)
    data = message("relayed by a user", "hi", sender="bhayden@example.org", to=REMOTE)
    with smtplib_client(server.port()) as s:
        s.ehlo()
        expect(s.mail("bhayden@example.org"), replies.SENDER_OK)
        expect(s.rcpt(REMOTE), replies.RELAY_DENIED)       # not logged in yet
        s.rset()
        s.starttls(context=client_context(cert))
        s.ehlo()
        expect(login(s, "bhayden"), replies.AUTH_OK)
        msg_id = deliver(s, "bhayden@example.org", [REMOTE], data)
    (queued, envelope), = server.queue_entries().values()
    assert envelope["sender"] == "bhayden@example.org"
    assert [r["address"] for r in envelope["recipients"]] == [REMOTE]
    received, rest = split_trace(queued, return_path=False)
    assert rest == stored_form(data)
    assert b"with ESMTPSA id " + msg_id.encode() in received


# ---------------------------------------------------------------- 4. TLS and AUTH

def tls_server(servers, certificate, **options):
    return servers(listen=TLS_LISTEN, tls=certificate, plaintext_auth="never",
                   trusted=STRANGER, **options)


def test_submission_requires_starttls_then_login(servers, certificate):
    cert, _ = certificate
    server = tls_server(servers, certificate)
    with smtplib_client(server.port("submission")) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        result = s.mail("bhayden@example.org")
        assert result in [(r.code, text_of(r)) for r in (replies.TLS_REQUIRED,
                                                        replies.AUTH_REQUIRED)], result
        expect(s.docmd("AUTH", "PLAIN"), replies.ENCRYPTION_REQUIRED)
        expect(s.docmd("AUTH", "LOGIN"), replies.ENCRYPTION_REQUIRED)
        s.starttls(context=client_context(cert))
        s.ehlo()
        assert s.has_extn("auth")
        assert set(s.esmtp_features["auth"].upper().split()) == {"PLAIN", "LOGIN"}
        expect(s.mail("bhayden@example.org"), replies.AUTH_REQUIRED)   # TLS is not a login
        expect(login(s, "bhayden"), replies.AUTH_OK)
        s.ehlo()
        assert not s.has_extn("auth")                                  # already logged in
        msg_id = deliver(s, "bhayden@example.org", ["alice@example.org"],
                         message("submitted", "body", sender="bhayden@example.org"))
    received, _ = split_trace(only_message(server, "alice"), "bhayden@example.org")
    assert b"with ESMTPSA id " + msg_id.encode() in received
    assert b"(using TLS" in received
    auth = settled_events(server, "auth")
    assert [(e["mechanism"], e["user"]) for e in auth] == [("PLAIN", "bhayden")]


def test_login_mechanisms_names_and_wrong_password(servers, certificate):
    cert, _ = certificate
    server = tls_server(servers, certificate)
    attempts = [("PLAIN", "bhayden", True), ("LOGIN", "bhayden", True),
                ("LOGIN", "bhayden@example.org", False), ("PLAIN", "bhayden@example.org", True),
                ("PLAIN", "BHayden@Example.NET", True)]
    for mechanism, user, initial in attempts:
        with smtplib_client(server.port("submission")) as s:
            s.starttls(context=client_context(cert))
            expect(login(s, user, mechanism=mechanism, initial_response_ok=initial),
                   replies.AUTH_OK)
            expect(s.mail("bhayden@example.org"), replies.SENDER_OK)
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib_client(server.port("submission")) as s:
            s.starttls(context=client_context(cert))
            try:
                login(s, "bhayden", "not the password", mechanism=mechanism)
            except smtplib.SMTPAuthenticationError as error:
                expect(refusal(error), replies.AUTH_FAILED)
            else:
                raise AssertionError(f"{mechanism} login with a wrong password succeeded")
            expect(s.mail("bhayden@example.org"), replies.AUTH_REQUIRED)
    assert [e["user"] for e in settled_events(server, "auth")] == ["bhayden"] * len(attempts)
    assert len(settled_events(server, "auth_failed")) == 2


def test_sender_must_route_to_the_logged_in_mailbox(servers, certificate):
    cert, _ = certificate
    server = tls_server(servers, certificate)
    with smtplib_client(server.port("submission")) as s:
        s.starttls(context=client_context(cert))
        expect(login(s, "bhayden"), replies.AUTH_OK)
        expect(s.mail("alice@example.org"), replies.SENDER_NOT_OWNED.fill(user="bhayden"))
        expect(s.mail("bhayden@gmail.example"), replies.SENDER_NOT_OWNED.fill(user="bhayden"))
        deliver(s, "sales@example.net", ["alice@example.org"],
                message("from sales", "by bhayden", sender="sales@example.net"))
        deliver(s, "bhayden+lists@example.org", ["alice@example.org"],
                message("from an extension", "by bhayden", sender="bhayden+lists@example.org"))
    with smtplib_client(server.port("submission")) as s:
        s.starttls(context=client_context(cert))
        expect(login(s, "alice"), replies.AUTH_OK)
        expect(s.mail("bhayden@example.org"), replies.SENDER_NOT_OWNED.fill(user="alice"))
        expect(s.mail("someone@example.net"), replies.SENDER_NOT_OWNED.fill(user="alice"))
        deliver(s, "sales@example.net", ["bhayden@example.org"],
                message("from sales", "by alice", sender="sales@example.net"))
    assert len(server.messages("alice")) == 2
    assert len(server.messages("bhayden")) == 1


def test_submissions_implicit_tls_verifies_and_sends(servers, certificate):
    cert, _ = certificate
    server = tls_server(servers, certificate)
    context = client_context(cert)
    with smtplib_client(server.port("submissions"), context=context) as s:
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert s.sock.getpeercert()["subject"] == ((("commonName", "mail.example.org"),),)
        s.ehlo()
        assert not s.has_extn("starttls")
        assert s.has_extn("auth")
        expect(login(s, "alice@example.org"), replies.AUTH_OK)
        data = message("over 465", "implicit TLS", sender="alice@example.org",
                       to="bhayden@example.org")
        msg_id = deliver(s, "alice@example.org", ["bhayden@example.org"], data)
    received, rest = split_trace(only_message(server, "bhayden"), "alice@example.org")
    assert rest == stored_form(data)
    assert b"with ESMTPSA id " + msg_id.encode() in received
    assert re.search(rb"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)", received)
    # The certificate really is checked: a client that trusts nothing else refuses it.
    with socket.create_connection((HOST, server.port("submissions")), timeout=TIMEOUT) as raw:
        try:
            ssl.create_default_context().wrap_socket(raw, server_hostname="mail.example.org")
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise AssertionError("a self-signed certificate verified against the system CAs")


# ---------------------------------------------------------------- 5. lock-out

def test_auth_failures_lock_out_the_address_even_with_the_right_password(servers):
    server = servers(limits="auth_failures = 3/1m\n")
    with smtplib_client(server.port()) as s:
        for attempt in range(3):
            try:
                login(s, "bhayden", f"wrong {attempt}")
            except smtplib.SMTPAuthenticationError as error:
                expect(refusal(error), replies.AUTH_FAILED)
            else:
                raise AssertionError("a wrong password was accepted")
        try:
            login(s, "bhayden", PASSWORD)
        except smtplib.SMTPAuthenticationError as error:
            expect(refusal(error), replies.AUTH_LOCKED)
        else:
            raise AssertionError("locked out address could still log in")
    with smtplib_client(server.port()) as s:                  # a new connection does not help
        for mechanism in ("PLAIN", "LOGIN"):
            try:
                login(s, "alice", PASSWORD, mechanism=mechanism)
            except smtplib.SMTPAuthenticationError as error:
                expect(refusal(error), replies.AUTH_LOCKED)
            else:
                raise AssertionError("locked out address could still log in")
    assert len(settled_events(server, "auth_failed")) == 3
    assert settled_events(server, "auth") == []


# ---------------------------------------------------------------- 6. limits

def test_max_message_size(servers):
    server = servers(limits="max_message_size = 100K\n")
    with smtplib_client(server.port()) as s:
        s.ehlo()
        assert s.esmtp_features.get("size") == "102400"
        expect(s.mail(SENDER, ["SIZE=200000"]), replies.MESSAGE_TOO_BIG)
        line = "x" * 98
        big = message("too big", *[line] * 1500)                 # ~150 KB
        assert len(big) > 150_000
        expect(transaction(s, SENDER, ["alice@example.org"], big), replies.MESSAGE_TOO_BIG)
        assert server.messages("alice") == []
        assert server.maildir_files("alice", "tmp") == []
        small = message("small enough", *[line] * 500)           # ~50 KB
        assert 50_000 < len(small) < 102_400
        deliver(s, SENDER, ["alice@example.org"], small, options=(f"SIZE={len(small)}",))
        small2 = message("small, no SIZE", *[line] * 500)
        deliver(s, SENDER, ["alice@example.org"], small2)
    stored = [split_trace(m, SENDER)[1] for m in server.messages("alice")]
    assert sorted(stored) == sorted([stored_form(small), stored_form(small2)])
    assert server.maildir_files("alice", "tmp") == []


def exact_message(size: int, dotted: bool) -> bytes:
    """A message of exactly `size` octets (CRLF endings, before dot-stuffing)."""
    head = b"Subject: exactly %d octets\r\n\r\n" % size
    line = (b"." if dotted else b"x") + b"y" * 97 + b"\r\n"           # 100 octets
    count, rest = divmod(size - len(head), len(line))
    if rest < 2:
        count, rest = count - 1, rest + len(line)
    data = head + line * count + b"z" * (rest - 2) + b"\r\n"
    assert len(data) == size
    return data


def test_size_limit_counts_message_octets_not_dot_stuffing(servers):
    """RFC 1870 5: the message size counts CRLFs but not the doubled quoting
    dots, so the server must accept what it accepted as SIZE= at MAIL."""
    server = servers(limits="max_message_size = 100K\n")
    limit = 102400
    with smtplib_client(server.port()) as s:
        expect(transaction(s, SENDER, ["alice@example.org"], exact_message(limit + 1, False)),
               replies.MESSAGE_TOO_BIG)
        deliver(s, SENDER, ["alice@example.org"], exact_message(limit, False),
                options=(f"SIZE={limit}",))
        dotted = exact_message(limit, True)
        result = transaction(s, SENDER, ["alice@example.org"], dotted,
                             options=(f"SIZE={limit}",))
        assert result[0] == 250, \
            f"{limit} octets with dot-stuffed lines, SIZE={limit} accepted at MAIL, then {result}"
    assert stored_form(dotted) in [split_trace(m, SENDER)[1] for m in server.messages("alice")]


def test_max_recipients(servers):
    server = servers(limits="max_recipients = 3\n")
    with smtplib_client(server.port()) as s:
        s.ehlo()
        expect(s.mail(SENDER), replies.SENDER_OK)
        for recipient in ("alice@example.org", "bhayden@example.org", "postmaster@example.org"):
            expect(s.rcpt(recipient), replies.RECIPIENT_OK)
        expect(s.rcpt("alice@example.net"), replies.TOO_MANY_RECIPIENTS)
        expect(s.rcpt("sales@example.net"), replies.TOO_MANY_RECIPIENTS)
        accepted_id(s.data(message("three", "recipients")))
    assert len(server.messages("alice")) == 1
    assert len(server.messages("bhayden")) == 1


# ---------------------------------------------------------------- 7. filter_command

def test_accepting_filter_gets_the_message_on_stdin(servers, tmp_path):
    capture, env_file = tmp_path / "stdin.copy", tmp_path / "env.copy"
    command = script(tmp_path / "bin", "accept.sh",
                     f"cat > {shlex.quote(str(capture))}\n"
                     f"printf '%s\\n' \"$MAILBOX_APPLIANCE_SENDER\" "
                     f"\"$MAILBOX_APPLIANCE_RECIPIENTS\" \"$MAILBOX_APPLIANCE_CLIENT\" "
                     f"> {shlex.quote(str(env_file))}\n"
                     "exit 0\n")
    with filter_server(tmp_path / "accept", command) as server:
        data = message("filtered", *TRICKY_BODY)
        with smtplib_client(server.port()) as s:
            msg_id = deliver(s, SENDER, ["alice@example.org", "bhayden@example.net"], data)
        stored = only_message(server, "alice")
        assert split_trace(stored, SENDER)[1] == stored_form(data)
        assert capture.read_bytes() == stored
        assert env_file.read_text().splitlines() == [
            SENDER, "alice@example.org bhayden@example.net", "127.0.0.1"]
        filtered = settled_events(server, "filter")
        assert [(e["msg"], e["result"]) for e in filtered] == [(msg_id, "accept")]


def test_rejecting_filter_refuses_strangers_only(servers, tmp_path):
    runs = tmp_path / "runs"
    command = script(tmp_path / "bin", "reject.sh",
                     f"cat > /dev/null\necho run >> {shlex.quote(str(runs))}\n"
                     "echo 'spam detected' >&2\nexit 1\n")
    with filter_server(tmp_path / "reject", command) as server:
        with smtplib_client(server.port()) as s:
            expect(transaction(s, SENDER, ["alice@example.org"], message("spam", "buy")),
                   replies.FILTER_REJECTED)
            assert server.messages("alice") == []
            assert server.maildir_files("alice", "tmp") == []
            # a logged-in user skips the filter (plaintext login is fine on loopback)
            expect(login(s, "bhayden"), replies.AUTH_OK)
            deliver(s, "bhayden@example.org", ["alice@example.org"],
                    message("from a user", "not spam", sender="bhayden@example.org"))
        assert len(server.messages("alice")) == 1
        assert runs.read_text() == "run\n"
        refused = settled_events(server, "data_refused")
        assert len(refused) == 1
        assert refused[0]["reply"] == "550"
        assert refused[0]["reason"] == "filter exit 1: spam detected"
    # a trusted client skips it too
    with filter_server(tmp_path / "trusted", command, trusted="127.0.0.0/8, ::1/128") as server:
        with smtplib_client(server.port()) as s:
            deliver(s, SENDER, ["alice@example.org"], message("trusted", "not filtered"))
        assert len(server.messages("alice")) == 1
        assert runs.read_text() == "run\n"


def test_filter_exit_75_is_a_temporary_failure(servers, tmp_path):
    command = script(tmp_path / "bin", "tempfail.sh", "cat > /dev/null\nexit 75\n")
    with filter_server(tmp_path / "tempfail", command) as server:
        with smtplib_client(server.port()) as s:
            expect(transaction(s, SENDER, ["alice@example.org"], message("later", "x")),
                   replies.FILTER_TEMPFAIL)
            # the session goes on: the next message gets the same answer
            expect(transaction(s, SENDER, ["bhayden@example.org"], message("later", "y")),
                   replies.FILTER_TEMPFAIL)
        assert server.messages("alice") == [] and server.messages("bhayden") == []
        assert server.maildir_files("alice", "tmp") == []
        assert server.maildir_files("bhayden", "tmp") == []


def test_slow_filter_times_out_as_a_temporary_failure(servers, tmp_path):
    command = script(tmp_path / "bin", "slow.sh", "cat > /dev/null\nsleep 8\nexit 0\n")
    with filter_server(tmp_path / "slow", command, timeout="1s") as server:
        with smtplib_client(server.port()) as s:
            s.ehlo()
            expect(s.mail(SENDER), replies.SENDER_OK)
            expect(s.rcpt("alice@example.org"), replies.RECIPIENT_OK)
            started = time.monotonic()
            result = s.data(message("slow", "filter"))
            elapsed = time.monotonic() - started
        expect(result, replies.FILTER_TEMPFAIL)
        assert elapsed < 5, f"filter_timeout = 1s, but the reply took {elapsed:.1f}s"
        assert server.messages("alice") == []
        refused = settled_events(server, "data_refused")
        assert len(refused) == 1 and refused[0]["reason"] == "filter timed out after 1s"


def process_alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_leftover_sleep(pid_file: Path) -> None:
    """Clean-up for the filter tests: end the `sleep` a filter script started, by PID."""
    if not pid_file.exists() or not pid_file.read_text().strip():
        return
    pid = int(pid_file.read_text())
    try:
        is_sleep = Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0")
    except (FileNotFoundError, ProcessLookupError):
        return
    if is_sleep and process_alive(pid):
        os.kill(pid, 9)


def test_timed_out_filter_is_killed_with_its_children(servers, tmp_path):
    """filter_timeout must end the filter's work, not leave it running: one
    hung helper per message from a stranger would pile up without bound."""
    pid_file = tmp_path / "sleep.pid"
    command = script(tmp_path / "bin", "hangs.sh",
                     f"cat > /dev/null\nsleep 8 &\necho $! > {shlex.quote(str(pid_file))}\n"
                     "wait\nexit 0\n")
    try:
        with filter_server(tmp_path / "hangs", command, timeout="1s") as server:
            with smtplib_client(server.port()) as s:
                expect(transaction(s, SENDER, ["alice@example.org"], message("hangs", "x")),
                       replies.FILTER_TEMPFAIL)
            pid = int(pid_file.read_text())
            wait_until(lambda: not process_alive(pid), 3.0, interval=0.1,
                       what=f"the timed-out filter's child (pid {pid}) gone")
    finally:
        kill_leftover_sleep(pid_file)


def test_filter_exit_0_is_accepted_at_once_though_a_background_job_runs_on(servers, tmp_path):
    """The verdict is the filter's exit status: a job it leaves in the background
    (holding its stderr) must not turn `exit 0` into a timeout."""
    pid_file = tmp_path / "sleep.pid"
    command = script(tmp_path / "bin", "background.sh",
                     f"cat > /dev/null\nsleep 6 &\necho $! > {shlex.quote(str(pid_file))}\n"
                     "exit 0\n")
    try:
        with filter_server(tmp_path / "background", command, timeout="3s") as server:
            with smtplib_client(server.port()) as s:
                s.ehlo()
                expect(s.mail(SENDER), replies.SENDER_OK)
                expect(s.rcpt("alice@example.org"), replies.RECIPIENT_OK)
                started = time.monotonic()
                result = s.data(message("background", "job"))
                elapsed = time.monotonic() - started
            assert result[0] == 250 and elapsed < 2.5, \
                f"filter exited 0 at once; server answered {result} after {elapsed:.1f}s"
            assert len(server.messages("alice")) == 1
    finally:
        kill_leftover_sleep(pid_file)


# ---------------------------------------------------------------- 8. swaks

def test_swaks_plain_smtp(servers):
    server = servers()
    done = swaks("--server", HOST, "--port", str(server.port()), "--from", "a@example.com",
                 "--to", "alice@example.org", "--body", "Sent by swaks.\nSecond line.",
                 "--header", "Subject: swaks test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  250 2.0.0 OK: queued as " in done.stdout
    received, rest = split_trace(only_message(server, "alice"), "a@example.com")
    assert received.startswith(b"Received: from swaks.example.com ([127.0.0.1])\n")
    assert b"\nSubject: swaks test\n" in b"\n" + rest
    assert b"\n\nSent by swaks.\nSecond line.\n" in rest
    assert b"\r" not in rest


def test_swaks_starttls_and_auth_on_submission(servers, certificate):
    server = tls_server(servers, certificate)
    done = swaks("--server", HOST, "--port", str(server.port("submission")),
                 "--from", "bhayden@example.org", "--to", "alice@example.org",
                 "--tls", "--auth", "PLAIN", "--auth-user", "bhayden",
                 "--auth-password", PASSWORD, "--body", "Submitted by swaks.",
                 "--header", "Subject: swaks submission")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 2.7.0 Authentication successful" in done.stdout
    received, rest = split_trace(only_message(server, "alice"), "bhayden@example.org")
    assert b"with ESMTPSA id " in received and b"(using TLS" in received
    assert b"Subject: swaks submission\n" in rest and b"\n\nSubmitted by swaks.\n" in rest
    # and without TLS the same client cannot log in at all
    done = swaks("--server", HOST, "--port", str(server.port("submission")),
                 "--from", "bhayden@example.org", "--to", "alice@example.org",
                 "--auth", "PLAIN", "--auth-user", "bhayden", "--auth-password", PASSWORD)
    assert done.returncode != 0
    assert len(server.messages("alice")) == 1


# ---------------------------------------------------------------- 9. IPv6

def test_ipv6_loopback(servers):
    server = servers(listen={"smtp": "[::1]:0"})
    data = message("over IPv6", "hello from ::1")
    with smtplib_client(server.port(), host="::1") as s:
        assert s.sock.family == socket.AF_INET6
        deliver(s, SENDER, ["alice@example.org", REMOTE], data)   # ::1/128 is trusted
    received, rest = split_trace(only_message(server, "alice"), SENDER)
    assert rest == stored_form(data)
    assert received.startswith(b"Received: from client.example.com ([::1])\n")
    assert len(server.queue_entries()) == 1
    with SmtpClient(server.port(), host="::1") as raw:
        assert raw.sock.family == socket.AF_INET6
        assert raw.reply().code == 220
        ehlo = raw.cmd("EHLO v6.example.com")
        assert ehlo.code == 250 and ehlo.lines[0] == "mail.example.org Hello v6.example.com [::1]"


# ---------------------------------------------------------------- 10. SMTPUTF8

def test_smtputf8_sender(servers):
    server = servers()
    with SmtpClient(server.port()) as raw:
        greeting = raw.reply()
        assert greeting.code == 220
        assert greeting.lines == [replies.GREETING.fill(host="mail.example.org").text]
        ehlo = raw.cmd("EHLO client.example.com")
        assert ehlo.code == 250 and "SMTPUTF8" in ehlo.lines and "8BITMIME" in ehlo.lines
        for line, reply in (("MAIL FROM:<jösé@example.com>", replies.NEEDS_SMTPUTF8),
                            ("MAIL FROM:<jösé@example.com> SMTPUTF8", replies.SENDER_OK),
                            ("RCPT TO:<alice@example.org>", replies.RECIPIENT_OK),
                            ("DATA", replies.START_DATA)):
            raw.cmd(line).assert_is(reply, exact_text=True)
        body = ("From: José <jösé@example.com>\r\nTo: alice@example.org\r\n"
                "Subject: Grüße ✓\r\n\r\n..dot-stuffed\r\nÜnïcødé body\r\n")
        raw.send(body.encode("utf-8") + b".\r\n")
        accepted = raw.reply()
        assert accepted.code == 250, accepted
        raw.cmd("QUIT").assert_is(replies.BYE, exact_text=True)
    received, rest = split_trace(only_message(server, "alice"), "jösé@example.com")
    assert b" with UTF8SMTP" in received
    assert rest == body.replace("\r\n", "\n").replace("\n..dot", "\n.dot").encode("utf-8")


# ---------------------------------------------------------------- 11. logging

def test_log_ties_the_message_together(servers):
    server = servers()
    data = message("logged", "see the log")
    with smtplib_client(server.port()) as s:
        msg_id = deliver(s, SENDER, ["alice@example.org", "sales@example.net"], data)
    server.wait_for_log(f"msg={msg_id}")
    accepted = settled_events(server, "accepted")
    assert len(accepted) == 1
    event = accepted[0]
    assert event["msg"] == msg_id
    assert event["sender"] == f"<{SENDER}>"
    assert int(event["size"]) == len(data)
    assert event["mailboxes"] == "alice,bhayden"
    rcpts = [(e["to"], e["result"], e["mailboxes"]) for e in settled_events(server, "rcpt")
             if e.get("msg") == msg_id]
    assert rcpts == [("<alice@example.org>", "local", "alice"),
                     ("<sales@example.net>", "local", "alice,bhayden")]
    session = event["session"]
    assert all(e["session"] == session for e in settled_events(server, "rcpt"))


def test_auth_secrets_never_reach_the_debug_log(servers):
    server = servers()                    # log_level = debug
    wrong = "Wr0ng-s3cret-XYZ"
    with smtplib_client(server.port()) as s:
        expect(login(s, "bhayden", PASSWORD, "PLAIN"), replies.AUTH_OK)
    with smtplib_client(server.port()) as s:
        expect(login(s, "alice", PASSWORD, "LOGIN", initial_response_ok=False),
               replies.AUTH_OK)
    with smtplib_client(server.port()) as s:
        try:
            login(s, "alice", wrong, "LOGIN")
        except smtplib.SMTPAuthenticationError as error:
            expect(refusal(error), replies.AUTH_FAILED)
        else:
            raise AssertionError("wrong password accepted")
    with smtplib_client(server.port()) as s:
        try:
            login(s, "bhayden", wrong, "PLAIN")
        except smtplib.SMTPAuthenticationError as error:
            expect(refusal(error), replies.AUTH_FAILED)
        else:
            raise AssertionError("wrong password accepted")
    log = settled_log(server)
    assert "event=recv" in log and "AUTH PLAIN ****" in log     # debug logging is on
    b64 = lambda text: base64.b64encode(text.encode()).decode()   # noqa: E731
    secrets = [PASSWORD, wrong, b64(f"\0bhayden\0{PASSWORD}"), b64(f"\0bhayden\0{wrong}"),
               b64(PASSWORD), b64(wrong)]
    for secret in secrets:
        assert secret not in log, f"{secret!r} is in the log"
    for secret in (PASSWORD, wrong):
        assert secret.replace(" ", "\\ ") not in log and repr(secret) not in log


# ---------------------------------------------------------------- 12. VRFY, HELP, EXPN

def test_vrfy_help_expn(servers):
    server = servers()
    with smtplib_client(server.port()) as s:
        s.ehlo()
        for who in ("alice", "alice@example.org", "nobody", "nobody@example.org",
                    "sales@example.net"):
            expect(s.verify(who), replies.CANNOT_VRFY)
        expect(s.docmd("HELP"), replies.HELP)
        expect(s.expn("sales@example.net"), replies.NOT_IMPLEMENTED)
        expect(s.expn("postmaster"), replies.NOT_IMPLEMENTED)
        # the session still works afterwards
        deliver(s, SENDER, ["alice@example.org"], message("after VRFY", "ok"))
    assert len(server.messages("alice")) == 1
