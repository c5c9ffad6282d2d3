"""The SMTP engine driven with no sockets: every command in every state."""

from __future__ import annotations

import base64
import logging
import textwrap

import pytest

from lib.config.tls import TlsInfo
from lib.core import replies
from lib.core.replies import Reply
from lib.log.events import EventLog, LineFormatter
from lib.session.engine import (
    HARD_ERROR_LIMIT,
    JUNK_COMMAND_LIMIT,
    LOGGED_REFUSALS,
    OVERSHOOT_LIMIT,
    Action,
    ClientInfo,
)
from lib.session.runtime import Services, load_runtime
from lib.smtp.session import SmtpSession, State

from ..support import HASH, PASSWORD

CONFIG = """
[server]
hostname = mail.example.org
data_dir = data
log = stderr

[limits]
max_message_size = 10K
max_recipients = 3

[policy]
trusted_networks = 10.0.0.0/8
{policy}

[domains]
example.org = *
example.net = *

[mailboxes]
bhayden = {hash}
alice = {hash}

[aliases]
postmaster = bhayden
sales@example.net = alice, bhayden
fwd = bhayden@gmail.example
"""

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


@pytest.fixture
def env(tmp_path, certificate):
    def build(extra: str = "", tls: bool = True, policy: str = ""):
        text = CONFIG.replace("{policy}", policy) + textwrap.dedent(extra)
        if tls:
            text += f"\n[tls]\ncert = {certificate[0]}\nkey = {certificate[1]}\n"
        path = tmp_path / "smtp.ini"
        path.write_text(text.replace("{hash}", HASH))
        runtime = load_runtime(path)
        return runtime, Services.create(runtime.config)
    return build


@pytest.fixture
def make(env):
    """make(ip=..., listener=..., tls=..., extra=...) -> a greeted session."""
    def build(ip="192.0.2.7", listener="smtp", tls=None, extra="", tls_configured=True,
              policy=""):
        runtime, services = env(extra, tls_configured, policy)
        session = SmtpSession(runtime, services, ClientInfo(ip, 40000, listener, tls))
        greeting = session.greeting()
        assert greeting.replies == [replies.GREETING.fill(host="mail.example.org")]
        return session
    return build


def send(session, *lines):
    """Feed lines; return every reply code (and the last step)."""
    codes, step = [], None
    for line in lines:
        step = session.feed_line(line.encode("utf-8", "surrogateescape") + b"\r\n")
        codes += [reply.code for reply in step.replies]
    return codes, step


def reply_of(session, line) -> Reply:
    step = session.feed_line(line.encode() + b"\r\n")
    assert len(step.replies) == 1
    return step.replies[0]


def login(session, user="bhayden", password=PASSWORD):
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return reply_of(session, f"AUTH PLAIN {token}")


def data(session, payload: bytes, chunk: int = 7):
    """Feed DATA content in small chunks; return the final step."""
    step = None
    for i in range(0, len(payload), chunk):
        step = session.feed_data(payload[i:i + chunk])
        if step.replies:
            return step
    return step


def stored(session, mailbox):
    folder = session.services.store.path(mailbox) / "new"
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


# ---------------------------------------------------------------- greeting and EHLO

def test_greeting_names_the_host(make):
    session = make()            # the fixture checks the 220 line itself
    assert session.state is State.CONNECTED


def test_ehlo_lists_extensions(make):
    session = make()
    step = session.feed_line(b"EHLO client.example\r\n")
    (reply,) = step.replies
    lines = reply.text.split("\n")
    assert reply.code == 250 and lines[0].startswith("mail.example.org")
    for ext in ("PIPELINING", "SIZE 10240", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                "STARTTLS"):
        assert ext in lines
    assert "AUTH PLAIN LOGIN" not in lines          # no TLS yet, not loopback
    assert session.state is State.READY


def test_ehlo_offers_auth_on_loopback_and_after_tls(make):
    assert "AUTH PLAIN LOGIN" in reply_of(make(ip="127.0.0.1"), "EHLO x").text
    session = make(tls=TLS)
    text = reply_of(session, "EHLO x").text
    assert "AUTH PLAIN LOGIN" in text and "STARTTLS" not in text


def test_ehlo_without_tls_configured_does_not_offer_starttls(make):
    assert "STARTTLS" not in reply_of(make(tls_configured=False), "EHLO x").text


def test_helo_is_plain_smtp(make):
    session = make()
    reply = reply_of(session, "HELO client.example")
    assert (reply.code, reply.enhanced) == (250, None) and "\n" not in reply.text
    assert session.esmtp is False


@pytest.mark.parametrize("line", ["EHLO", "EHLO   ", "HELO", "EHLO two words"])
def test_hello_needs_one_argument(make, line):
    assert reply_of(make(), line).code == 501


# ---------------------------------------------------------------- wrong states (503)

@pytest.mark.parametrize("line", ["MAIL FROM:<a@example.com>", "RCPT TO:<alice@example.org>",
                                  "DATA", "STARTTLS", "AUTH PLAIN"])
def test_commands_before_ehlo_are_out_of_sequence(make, line):
    reply = reply_of(make(), line)
    assert (reply.code, reply.enhanced) == (503, "5.5.1")


def test_rcpt_and_data_need_mail(make):
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, "RCPT TO:<alice@example.org>").code == 503
    assert reply_of(session, "DATA").code == 503


def test_nested_mail_is_refused(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "MAIL FROM:<b@example.com>").code == 503
    send(session, "RCPT TO:<alice@example.org>")
    assert reply_of(session, "MAIL FROM:<b@example.com>").code == 503
    assert reply_of(session, "STARTTLS").code == 503
    assert reply_of(session, "AUTH PLAIN").code == 503


def test_data_after_only_refused_recipients(make):
    session = make()
    codes, _ = send(session, "EHLO x", "MAIL FROM:<a@example.com>", "RCPT TO:<nobody@example.org>",
                    "DATA")
    assert codes == [250, 250, 550, 554]
    assert session.state is State.MAIL


# ---------------------------------------------------------------- unknown, syntax, limits

def test_unknown_and_unimplemented_commands(make):
    session = make()
    assert reply_of(session, "FOO bar") == replies.UNKNOWN_COMMAND
    assert reply_of(session, "EXPN staff") == replies.NOT_IMPLEMENTED
    assert reply_of(session, "BDAT 10 LAST") == replies.NOT_IMPLEMENTED


def test_nul_in_command(make):
    session = make()
    step = session.feed_line(b"NOOP\0x\r\n")
    assert step.replies == [replies.NUL_IN_COMMAND]


def test_too_many_errors_close_the_connection(make):
    session = make()
    for _ in range(20):
        assert reply_of(session, "BOGUS").code == 500
    step = session.feed_line(b"BOGUS\r\n")
    assert [r.code for r in step.replies] == [500, 421]
    assert step.action is Action.CLOSE and session.state is State.CLOSED


def test_http_request_is_refused_and_closed(make):
    session = make()
    step = session.feed_line(b"GET / HTTP/1.1\r\n")
    assert step.replies == [replies.HTTP_REFUSED] and step.action is Action.CLOSE


def test_line_too_long_is_answered(make):
    session = make()
    assert session.line_too_long().replies == [replies.LINE_TOO_LONG]
    assert session.state is State.CONNECTED


@pytest.mark.parametrize("line, code", [
    ("MAIL TO:<a@example.com>", 501), ("MAIL FROM:<a@example.com", 501),
    ("MAIL FROM:<a@@example.com>", 501), ("MAIL FROM:<a@example.com> SIZE=abc", 501),
    ("MAIL FROM:<a@example.com> SIZE=1 SIZE=2", 501),
    ("MAIL FROM:<a@example.com> RET=HDRS", 555),
    ("MAIL FROM:<a@example.com> BODY=BINARYMIME", 555),
    ("MAIL FROM:<a@example.com> SIZE=20000", 552),
    ("MAIL FROM:<jösé@example.com>", 553),
])
def test_mail_syntax_and_parameters(make, line, code):
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, line).code == code
    assert session.state is State.READY


def test_mail_parameters_accepted(make):
    session = make()
    send(session, "EHLO x")
    reply = reply_of(session, "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME AUTH=<>")
    assert reply == replies.SENDER_OK
    assert session.state is State.MAIL


def test_null_sender_and_lenient_forms(make):
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, "MAIL FROM:<>").code == 250
    assert session.transaction.sender is None
    send(session, "RSET")
    assert reply_of(session, "mail from: <a@example.com>").code == 250


def test_rcpt_results(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "RCPT TO:<alice@example.org>") == replies.RECIPIENT_OK
    assert reply_of(session, "RCPT TO:<nobody@example.org>") == replies.NO_SUCH_USER
    assert reply_of(session, "RCPT TO:<x@gmail.example>") == replies.RELAY_DENIED
    assert reply_of(session, "RCPT TO:<fwd@example.org>").code == 250   # the alias decides
    assert reply_of(session, "RCPT TO:<Postmaster>").code == 250        # RFC 5321 4.5.1
    assert reply_of(session, "RCPT TO:<alice@example.org> NOTIFY=NEVER").code == 555
    assert reply_of(session, "RCPT TO:<>").code == 501
    assert reply_of(session, "RCPT FROM:<alice@example.org>").code == 501


def test_max_recipients(make):
    session = make()
    codes, _ = send(session, "EHLO x", "MAIL FROM:<a@example.com>",
                    *(f"RCPT TO:<alice+{i}@example.org>" for i in range(4)))
    assert codes == [250, 250, 250, 250, 250, 452]


def test_trusted_network_may_relay(make):
    session = make(ip="10.1.2.3")
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "RCPT TO:<x@gmail.example>").code == 250


def test_smtputf8_recipient_needs_the_parameter(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "RCPT TO:<jösé@example.net>").code == 553
    send(session, "RSET", "MAIL FROM:<jösé@example.com> SMTPUTF8")
    assert session.transaction.utf8
    assert reply_of(session, "RCPT TO:<jösé@example.net>").code == 550   # no catch-all here


# ---------------------------------------------------------------- simple commands

def test_noop_rset_help_vrfy_quit(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "NOOP anything") == replies.OK
    assert reply_of(session, "RSET") == replies.RESET_OK and session.transaction is None
    assert reply_of(session, "HELP").code == 214
    assert reply_of(session, "VRFY alice") == replies.CANNOT_VRFY
    assert reply_of(session, "VRFY nobody") == replies.CANNOT_VRFY
    assert reply_of(session, "VRFY").code == 501
    step = session.feed_line(b"QUIT\r\n")
    assert step.replies == [replies.BYE] and step.action is Action.CLOSE
    assert session.feed_line(b"NOOP\r\n").replies == []


def test_commands_are_case_insensitive_and_accept_bare_lf(make):
    session = make()
    assert session.feed_line(b"ehlo x\n").replies[0].code == 250
    assert session.feed_line(b"nOoP\n").replies == [replies.OK]


# ---------------------------------------------------------------- STARTTLS

def test_starttls_flow_resets_everything(make):
    session = make(ip="127.0.0.1")
    send(session, "EHLO x")
    assert login(session) == replies.AUTH_OK
    step = session.feed_line(b"STARTTLS\r\n")
    assert step.replies == [replies.READY_FOR_TLS] and step.action is Action.START_TLS
    session.tls_started(TLS)
    assert session.state is State.CONNECTED and session.user is None and session.helo is None
    assert reply_of(session, "MAIL FROM:<a@example.com>").code == 503
    assert "STARTTLS" not in reply_of(session, "EHLO x").text
    assert reply_of(session, "STARTTLS").code == 503


def test_starttls_refusals(make):
    session = make(tls_configured=False)
    send(session, "EHLO x")
    assert reply_of(session, "STARTTLS") == replies.NOT_IMPLEMENTED
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, "STARTTLS now").code == 501


# ---------------------------------------------------------------- AUTH

def test_auth_needs_tls_from_strangers(make):
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, "AUTH PLAIN") == replies.ENCRYPTION_REQUIRED


def test_auth_plain_with_initial_response(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    assert login(session) == replies.AUTH_OK and session.user == "bhayden"
    assert login(session).code == 503                     # already authenticated


def test_auth_plain_in_two_steps_and_login_name_with_domain(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    step = session.feed_line(b"AUTH PLAIN\r\n")
    assert step.replies[0].code == 334 and session.state is State.AUTH
    token = base64.b64encode(f"\0alice@example.net\0{PASSWORD}".encode())
    assert session.feed_line(token + b"\r\n").replies == [replies.AUTH_OK]
    assert session.user == "alice"


def test_auth_login(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    reply = reply_of(session, "AUTH LOGIN")
    assert (reply.code, reply.text) == (334, "VXNlcm5hbWU6")
    reply = reply_of(session, base64.b64encode(b"bhayden").decode())
    assert (reply.code, reply.text) == (334, "UGFzc3dvcmQ6")
    assert reply_of(session, base64.b64encode(PASSWORD.encode()).decode()) == replies.AUTH_OK


def test_auth_login_with_initial_username(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    reply = reply_of(session, "AUTH LOGIN " + base64.b64encode(b"bhayden").decode())
    assert reply.text == "UGFzc3dvcmQ6"


def test_auth_failures(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    assert login(session, password="wrong") == replies.AUTH_FAILED
    assert login(session, user="nobody") == replies.AUTH_FAILED
    assert reply_of(session, "AUTH CRAM-MD5") == replies.UNKNOWN_MECHANISM
    assert reply_of(session, "AUTH PLAIN !!notbase64").code == 501
    assert reply_of(session, "AUTH").code == 501
    reply_of(session, "AUTH PLAIN")
    assert reply_of(session, "*") == replies.AUTH_CANCELLED
    assert session.state is State.READY and session.user is None


def test_auth_lockout_is_shared_across_sessions(make, env):
    session = make(tls=TLS)
    send(session, "EHLO x")
    for _ in range(5):
        assert login(session, password="wrong") == replies.AUTH_FAILED
    assert login(session) == replies.AUTH_LOCKED
    other = SmtpSession(session.runtime, session.services, ClientInfo("192.0.2.7", 1, "smtp", TLS))
    other.greeting()
    send(other, "EHLO x")
    assert reply_of(other, "AUTH PLAIN") == replies.AUTH_LOCKED
    elsewhere = SmtpSession(session.runtime, session.services,
                            ClientInfo("192.0.2.8", 1, "smtp", TLS))
    elsewhere.greeting()
    send(elsewhere, "EHLO x")
    assert login(elsewhere) == replies.AUTH_OK               # only that IP is locked


def test_submission_requires_login(make):
    session = make(listener="submission", tls=TLS)
    send(session, "EHLO x")
    assert reply_of(session, "MAIL FROM:<bhayden@example.org>") == replies.AUTH_REQUIRED
    session = make(listener="submission")
    send(session, "EHLO x")
    assert reply_of(session, "MAIL FROM:<bhayden@example.org>") == replies.TLS_REQUIRED


def test_logged_in_user_sender_must_route_to_them(make):
    session = make(listener="submission", tls=TLS)
    send(session, "EHLO x")
    login(session, user="alice")
    assert reply_of(session, "MAIL FROM:<bhayden@example.org>").code == 553
    assert reply_of(session, "MAIL FROM:<alice+x@example.net>").code == 250
    send(session, "RSET")
    assert reply_of(session, "MAIL FROM:<sales@example.net>").code == 250
    send(session, "RSET")
    assert reply_of(session, "MAIL FROM:<>").code == 250
    assert reply_of(session, "RCPT TO:<x@gmail.example>").code == 250   # logged in: may relay


# ---------------------------------------------------------------- DATA

def start_data(session, *recipients, sender="a@example.com"):
    codes, step = send(session, "EHLO client.example", f"MAIL FROM:<{sender}>",
                       *(f"RCPT TO:<{r}>" for r in recipients), "DATA")
    assert codes[-1] == 354, codes
    assert session.receiving_data


def test_data_is_delivered_with_trace_headers(make):
    session = make()
    start_data(session, "alice@example.org", "sales@example.net")
    step = session.feed_data(b"Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\nNOOP\r\n")
    (reply,) = step.replies
    assert reply.code == 250 and reply.text.startswith("OK: queued as ")
    assert step.leftover == b"NOOP\r\n"
    assert session.state is State.READY and session.transaction is None
    (alice,) = stored(session, "alice")
    (bhayden,) = stored(session, "bhayden")
    assert alice == bhayden
    assert alice.startswith(b"Return-Path: <a@example.com>\nReceived: from client.example "
                            b"([192.0.2.7])\n\tby mail.example.org (mailbox_appliance) "
                            b"with ESMTP id ")
    assert alice.endswith(b"\nSubject: hi\n\n.leading dot\nline\n")


def test_received_header_names_one_recipient_tls_and_login(make):
    session = make(tls=TLS)
    send(session, "EHLO x")
    login(session, user="alice")
    start_data(session, "bhayden@example.org", sender="alice@example.org")
    data(session, b"x\r\n.\r\n")
    (message,) = stored(session, "bhayden")
    head = message.split(b"\nx\n")[0].decode()
    assert "with ESMTPSA id" in head and "using TLSv1.3 with cipher" in head
    assert "for <bhayden@example.org>;" in head


def test_empty_message_and_immediate_end(make):
    session = make()
    start_data(session, "alice@example.org")
    step = session.feed_data(b".\r\n")
    assert step.replies[0].code == 250
    (message,) = stored(session, "alice")
    assert message.startswith(b"Return-Path:")


def test_message_too_big(make):
    session = make()
    start_data(session, "alice@example.org")
    step = data(session, b"x" * 50 + (b"y" * 900 + b"\r\n") * 12 + b".\r\n", chunk=4096)
    assert step.replies == [replies.MESSAGE_TOO_BIG]
    assert stored(session, "alice") == []
    assert list((session.services.store.path("alice") / "tmp").iterdir()) == []


def test_overlong_data_line(make):
    session = make()
    start_data(session, "alice@example.org")
    step = data(session, b"a" * 999 + b"\r\n.\r\n", chunk=100)
    assert step.replies == [replies.DATA_LINE_TOO_LONG]
    assert stored(session, "alice") == []


def test_mail_loop_is_refused(make):
    session = make()
    start_data(session, "alice@example.org")
    step = data(session, b"Received: x\r\n" * 30 + b"\r\nbody\r\n.\r\n", chunk=64)
    assert step.replies == [replies.TOO_MANY_HOPS]
    session.feed_line(b"RSET\r\n")
    start_data(session, "alice@example.org")
    step = data(session, b"Received: x\r\n" * 28 + b"\r\nReceived: in body\r\n.\r\n", chunk=64)
    assert step.replies[0].code == 250


def test_remote_recipient_goes_to_the_queue_without_return_path(make):
    session = make(ip="10.0.0.1")
    start_data(session, "alice@example.org", "friend@gmail.example", "fwd@example.org")
    step = data(session, b"Subject: both\r\n\r\nhello\r\n.\r\n")
    assert step.replies[0].code == 250
    queue_id = step.replies[0].text.rsplit(" ", 1)[1]
    spool = session.services.spool
    envelope = spool.load(queue_id)
    assert envelope.sender == "a@example.com"
    assert [(r.address, r.original, r.state) for r in envelope.recipients] == [
        ("friend@gmail.example", "", "pending"),
        ("bhayden@gmail.example", "fwd@example.org", "pending")]
    queued = spool.message_path(queue_id).read_bytes()
    assert queued.startswith(b"Received: from client.example") and b"Return-Path" not in queued
    (local,) = stored(session, "alice")
    assert local == b"Return-Path: <a@example.com>\n" + queued


def test_disconnect_during_data_leaves_nothing(make):
    session = make()
    start_data(session, "alice@example.org")
    session.feed_data(b"Subject: partial\r\n\r\nsome")
    session.close("client vanished")
    assert stored(session, "alice") == []
    assert list((session.services.store.path("alice") / "tmp").iterdir()) == []


def test_timeout_and_shutdown_replies(make):
    session = make()
    step = session.timeout()
    assert step.replies[0].code == 421 and step.replies[0].enhanced == "4.4.2"
    assert step.action is Action.CLOSE
    session = make()
    step = session.shutdown()
    assert step.replies[0].code == 421 and step.action is Action.CLOSE


def filter_script(tmp_path, code: int) -> str:
    script = tmp_path / f"filter{code}.sh"
    script.write_text(f"#!/bin/sh\ncat > {tmp_path}/seen.txt\necho verdict >&2\nexit {code}\n")
    script.chmod(0o755)
    return f"filter_command = {script}\nfilter_timeout = 5s"


@pytest.mark.parametrize("code, expected", [(0, 250), (1, 550), (75, 451)])
def test_filter_verdicts_for_strangers(make, tmp_path, code, expected):
    session = make(policy=filter_script(tmp_path, code))
    start_data(session, "alice@example.org")
    step = data(session, b"Subject: filtered\r\n\r\nbody\r\n.\r\n", chunk=1000)
    assert step.replies[0].code == expected
    assert (tmp_path / "seen.txt").read_bytes().endswith(b"\nSubject: filtered\n\nbody\n")
    assert len(stored(session, "alice")) == (1 if expected == 250 else 0)


def test_filter_timeout_is_a_temporary_failure(make, tmp_path):
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 10\n")
    script.chmod(0o755)
    session = make(policy=f"filter_command = {script}\nfilter_timeout = 0.3s")
    start_data(session, "alice@example.org")
    assert data(session, b"x\r\n.\r\n", chunk=100).replies == [replies.FILTER_TEMPFAIL]


def test_filter_skipped_for_trusted_and_logged_in(make, tmp_path):
    policy = filter_script(tmp_path, 1)
    trusted = make(ip="10.9.9.9", policy=policy)
    start_data(trusted, "alice@example.org")
    assert data(trusted, b"x\r\n.\r\n", chunk=100).replies[0].code == 250
    user = make(tls=TLS, policy=policy)
    send(user, "EHLO x")
    login(user)
    start_data(user, "alice@example.org", sender="bhayden@example.org")
    assert data(user, b"x\r\n.\r\n", chunk=100).replies[0].code == 250
    assert not (tmp_path / "seen.txt").exists()


def test_envelope_of_many_messages_on_one_connection(make):
    session = make()
    for n in range(3):
        start_data(session, "alice@example.org") if n == 0 else \
            send(session, "MAIL FROM:<a@example.com>", "RCPT TO:<alice@example.org>", "DATA")
        assert data(session, b"n=%d\r\n.\r\n" % n).replies[0].code == 250
    assert len(stored(session, "alice")) == 3
    assert session.messages == 3


def test_an_internal_error_is_answered_451_and_the_session_goes_on(make, monkeypatch):
    session = make()
    send(session, "EHLO x")
    monkeypatch.setattr(session.router, "resolve", lambda address: 1 / 0)
    send(session, "MAIL FROM:<a@example.com>")
    assert reply_of(session, "RCPT TO:<alice@example.org>") == replies.LOCAL_ERROR
    assert session.state is State.READY
    assert reply_of(session, "NOOP") == replies.OK


def test_non_ascii_digits_are_not_sizes(make):
    session = make()
    send(session, "EHLO x")
    assert reply_of(session, "MAIL FROM:<a@example.com> SIZE=²").code == 501


def test_refused_recipients_count_towards_the_error_limit(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    for number in range(20):
        assert reply_of(session, f"RCPT TO:<nobody{number}@example.org>") == replies.NO_SUCH_USER
    step = session.feed_line(b"RCPT TO:<nobody@example.org>\r\n")
    assert [r.code for r in step.replies] == [550, 421] and step.action is Action.CLOSE


def test_queued_copy_is_announced_only_after_the_local_copies(make, monkeypatch):
    session = make(ip="10.0.0.1")
    spool = session.services.spool
    announced = []
    spool.notify = announced.append
    start_data(session, "alice@example.org", "friend@gmail.example")
    real_commit = session.services.store.commit

    def commit_then_check(temp, mailboxes):
        assert announced == []                    # not before the Maildir commit
        return real_commit(temp, mailboxes)
    monkeypatch.setattr(session.services.store, "commit", commit_then_check)
    step = data(session, b"x\r\n.\r\n", chunk=100)
    assert step.replies[0].code == 250 and len(announced) == 1


def test_a_failed_local_commit_takes_the_queued_copy_back(make, monkeypatch):
    session = make(ip="10.0.0.1")
    spool = session.services.spool
    announced = []
    spool.notify = announced.append
    start_data(session, "alice@example.org", "friend@gmail.example")

    def broken(temp, mailboxes):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(session.services.store, "commit", broken)
    step = data(session, b"x\r\n.\r\n", chunk=100)
    assert step.replies == [replies.LOCAL_ERROR]
    assert spool.ids() == [] and announced == []


# ---------------------------------------------------------------- the transaction is replaced whole

def tmp_files(session, mailbox="alice"):
    return list((session.services.store.path(mailbox) / "tmp").iterdir())


@pytest.mark.parametrize("ending", ["RSET", "EHLO again", "HELO again", "message"])
def test_each_transaction_is_a_new_object(make, ending):
    session = make()
    start_data(session, "alice@example.org")
    first = session.transaction
    assert first is not None and first.incoming is not None
    assert data(session, b"x\r\n.\r\n").replies[0].code == 250
    send(session, "MAIL FROM:<a@example.com>")
    second = session.transaction
    assert second is not first and second.incoming is None and second.write_error is None
    if ending != "message":
        send(session, ending)
        assert session.transaction is None and session.state is State.READY
        send(session, "MAIL FROM:<a@example.com>")
        assert session.transaction is not second


def test_starttls_drops_the_transaction(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    session.tls_started(TLS)
    assert session.transaction is None and session.state is State.CONNECTED


def test_a_disk_error_refuses_that_message_only(make, monkeypatch):
    session = make()
    start_data(session, "alice@example.org")

    def full(data, lines=None):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(session.transaction.incoming, "write", full)
    assert session.feed_data(b"Subject: lost\r\n").replies == []     # reads on to the end
    step = session.feed_data(b"\r\nbody\r\n.\r\nNOOP\r\n")
    assert step.replies == [replies.LOCAL_ERROR] and step.leftover == b"NOOP\r\n"
    assert tmp_files(session) == [] and session.transaction is None
    start_data(session, "alice@example.org")       # a new transaction: no error carried over
    assert data(session, b"fine\r\n.\r\n").replies[0].code == 250
    (message,) = stored(session, "alice")
    assert message.endswith(b"\nfine\n")


def test_a_bug_mid_data_closes_and_discards(make, monkeypatch):
    session = make()
    start_data(session, "alice@example.org")
    session.feed_data(b"Subject: half\r\n")
    monkeypatch.setattr(session.transaction.receiver, "feed", lambda chunk: 1 / 0)
    step = session.feed_data(b"more\r\n")
    assert step.replies == [replies.LOCAL_ERROR] and step.action is Action.CLOSE
    assert session.state is State.CLOSED and tmp_files(session) == []


def test_a_failed_commit_discards_the_message(make, monkeypatch):
    session = make()
    start_data(session, "alice@example.org")
    monkeypatch.setattr(session.services.store, "commit", lambda temp, mailboxes: 1 / 0)
    assert data(session, b"x\r\n.\r\n").replies == [replies.LOCAL_ERROR]
    assert tmp_files(session) == [] and session.state is State.READY


# ---------------------------------------------------------------- every way out of AUTH

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("way_out, line, expected", [
    ("success", _b64(PASSWORD), replies.AUTH_OK),
    ("wrong password", _b64("wrong"), replies.AUTH_FAILED),
    ("cancel", "*", replies.AUTH_CANCELLED),
    ("bad base64", "%%%", replies.AUTH_BAD_RESPONSE.fill(detail="not valid base64")),
    ("bad UTF-8", base64.b64encode(b"\xff").decode(),
     replies.AUTH_BAD_RESPONSE.fill(detail="not UTF-8")),
    ("overlong line", None, replies.LINE_TOO_LONG),
    ("internal error", _b64(PASSWORD), replies.LOCAL_ERROR),
])
def test_every_way_out_of_auth_returns_to_ready(make, monkeypatch, way_out, line, expected):
    session = make(tls=TLS)
    send(session, "EHLO x")
    assert reply_of(session, "AUTH LOGIN").code == 334
    assert reply_of(session, _b64("bhayden")).text == "UGFzc3dvcmQ6"
    assert session.state is State.AUTH and session.max_line == 12288
    if way_out == "internal error":
        monkeypatch.setattr(session.services.auth, "login", lambda *args: 1 / 0)
    if line is None:
        step = session.line_too_long()
    else:
        step = session.feed_line(line.encode() + b"\r\n")
    assert step.replies == [expected]
    assert session.state is State.READY and session._auth is None
    assert session.max_line == 512
    assert reply_of(session, "NOOP") == replies.OK
    assert (session.user == "bhayden") == (way_out == "success")


def test_closing_inside_auth_ends_the_exchange(make):
    session = make(tls=TLS)
    send(session, "EHLO x", "AUTH PLAIN")
    assert session.state is State.AUTH
    assert session.timeout().action is Action.CLOSE
    assert session.state is State.CLOSED and session._auth is None


@pytest.mark.parametrize("lines, wire", [
    (["EHLO"], b"501 5.5.4 EHLO needs one argument: your domain or address literal\r\n"),
    (["HELO a b"], b"501 5.5.4 HELO needs one argument: your domain or address literal\r\n"),
    (["RSET x"], b"501 5.5.4 RSET takes no argument\r\n"),
    (["VRFY"], b"501 5.5.4 VRFY needs an argument\r\n"),
    (["EHLO x", "STARTTLS x"], b"501 5.5.4 STARTTLS takes no argument\r\n"),
    (["EHLO x", "AUTH"], b"501 5.5.4 AUTH needs a mechanism\r\n"),
    (["EHLO x", "MAIL TO:<a@b.example>"], b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example> X=Y X=Z"], b"501 5.5.4 Parameter X given twice\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example> =z"], b"501 5.5.4 Bad parameter '=z'\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example> SIZE"], b"501 5.5.4 SIZE needs a number\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example> SMTPUTF8=1"], b"501 5.5.4 SMTPUTF8 takes no value\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example>", "RCPT <x@y.example>"],
     b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
    (["EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<alice@example.org>", "DATA x"],
     b"501 5.5.4 DATA takes no argument\r\n"),
    (["HELO client.example"], b"250 mail.example.org\r\n"),
])
def test_reply_wire_format(make, lines, wire):
    session = make()
    *before, last = lines
    send(session, *before)
    assert reply_of(session, last).to_bytes() == wire


def test_ehlo_wire_format(make):
    step = make(ip="127.0.0.1").feed_line(b"EHLO cl{ie}nt\r\n")
    assert step.replies[0].to_bytes() == (
        b"250-mail.example.org Hello cl?ie?nt [127.0.0.1]\r\n250-PIPELINING\r\n"
        b"250-SIZE 10240\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n"
        b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n")


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3"])       # this machine, the LAN
def test_bare_names_from_our_own_programs_get_the_first_local_domain(make, ip):
    session = make(ip=ip)
    codes, _ = send(session, "EHLO cron.example", "MAIL FROM:<root>", "RCPT TO:<alice>")
    assert codes[1:] == [250, 250]
    assert str(session.transaction.sender) == "root@example.org"
    assert [str(r) for r, _ in session.transaction.recipients] == ["alice@example.org"]


def test_bare_names_from_strangers_stay_a_syntax_error(make):
    session = make()
    codes, _ = send(session, "EHLO x.example", "MAIL FROM:<root>",
                    "MAIL FROM:<a@b.example>", "RCPT TO:<alice>", "RCPT TO:<postmaster>")
    assert codes[1:] == [501, 250, 501, 250]


# ---------------------------------------------------------------- abuse (issue 11)

class Lines(logging.Handler):
    """The log lines of one session, formatted as the server writes them."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(LineFormatter(with_time=False))
        self.logger = logging.Logger("smtp-under-test", logging.INFO)
        self.logger.addHandler(self)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def events(self, event: str) -> list[str]:
        return [line for line in self.lines if f" event={event} " in line + " "]


@pytest.fixture
def logged(env):
    """logged(ip=...) -> (a greeted session on port 25, the Lines of its log)."""
    def build(ip="192.0.2.7", listener="smtp"):
        runtime, services = env()
        lines = Lines()
        session = SmtpSession(runtime, services, ClientInfo(ip, 40000, listener),
                              log=EventLog("smtp", logger=lines.logger))
        session.greeting()
        return session, lines
    return build


def test_greet_pause_is_for_strangers_on_port_25_only(make):
    assert make().greet_pause == 1.0                         # [limits] greet_pause default
    assert make(ip="10.0.0.1").greet_pause == 0.0            # trusted
    assert make(listener="submission").greet_pause == 0.0


def test_a_client_talking_before_the_greeting_is_refused(env):
    runtime, services = env()
    session = SmtpSession(runtime, services, ClientInfo("192.0.2.7", 40000, "smtp"))
    step = session.greeting(b"EHLO spam.example\r\nMAIL FROM:<a@b.example>\r\n")
    assert step.replies == [replies.PROTOCOL_SYNC] and step.action is Action.CLOSE
    assert (replies.PROTOCOL_SYNC.code, replies.PROTOCOL_SYNC.enhanced) == (554, "5.5.0")
    assert session.state is State.CLOSED


@pytest.mark.parametrize("lines, refused_at", [
    (["EHLO x"], 0),                                         # EHLO must end a group
    (["HELO x"], 0),
    (["NOOP"], 0),                                           # before EHLO: nothing may be pipelined
    (["EHLO x", "MAIL FROM:<a@example.com>", "RCPT TO:<alice@example.org>", "DATA"], 3),
    (["HELO x", "MAIL FROM:<a@example.com>"], 1),            # no PIPELINING after HELO
    (["EHLO x", "NOOP"], 1),
    (["EHLO x", "VRFY alice"], 1),
])
def test_a_stranger_pipelining_past_a_group_end_is_refused(make, lines, refused_at):
    session = make()
    for number, line in enumerate(lines):
        more = number == refused_at
        step = session.feed_line(line.encode() + b"\r\n", more_input=more)
        if more:
            assert step.replies == [replies.PROTOCOL_SYNC] and step.action is Action.CLOSE
            assert session.state is State.CLOSED
            return
        assert step.replies[0].code < 400, (line, step.replies)
    raise AssertionError("never refused")


def test_legal_pipelining_and_trusted_or_logged_in_clients_go_on(make):
    stranger = make()
    send(stranger, "EHLO x")
    for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<alice@example.org>", "RSET"):
        assert stranger.feed_line(line.encode() + b"\r\n", more_input=True).replies[0].code == 250
    for client in (make(ip="10.0.0.1"), make(ip="127.0.0.1")):
        if client.trusted:
            steps = [client.feed_line(f"{line}\r\n".encode(), more_input=True)
                     for line in ("EHLO x", "MAIL FROM:<a@example.com>",
                                  "RCPT TO:<alice@example.org>", "DATA")]
        else:                                                # loopback: logs in first
            send(client, "EHLO x")
            assert login(client) == replies.AUTH_OK
            steps = [client.feed_line(f"{line}\r\n".encode(), more_input=True)
                     for line in ("EHLO x", "MAIL FROM:<bhayden@example.org>",
                                  "RCPT TO:<alice@example.org>", "DATA")]
        assert [s.replies[0].code for s in steps] == [250, 250, 250, 354]
        client.close()


def test_the_tarpit_delays_replies_to_strangers_past_ten_errors(make):
    stranger = make()
    send(stranger, "EHLO x", "MAIL FROM:<a@example.com>")
    delays = [stranger.feed_line(f"RCPT TO:<nobody{n}@example.org>\r\n".encode()).delay
              for n in range(12)]
    assert delays == [0.0] * 10 + [1.0, 1.0]                 # [limits] error_sleep
    assert stranger.feed_line(b"RCPT TO:<alice@example.org>\r\n").delay == 1.0   # every reply
    trusted = make(ip="10.0.0.1")
    send(trusted, "EHLO x", "MAIL FROM:<a@example.com>")
    assert all(trusted.feed_line(f"RCPT TO:<nobody{n}@example.org>\r\n".encode()).delay == 0
               for n in range(15))


def test_an_accepted_message_forgives_earlier_errors(make):
    session = make()
    send(session, "EHLO x", "MAIL FROM:<a@example.com>",
         *(f"RCPT TO:<nobody{n}@example.org>" for n in range(15)), "RCPT TO:<alice@example.org>",
         "DATA")
    assert session.budget.errors == 15
    assert data(session, b"Subject: x\r\n\r\nhi\r\n.\r\n").replies[0].code == 250
    assert session.budget.errors == 0
    assert session.feed_line(b"RCPT TO:<x@example.org>\r\n").delay == 0.0


def test_refusals_past_the_overshoot_limit_count_as_errors(make):
    session = make()                                         # max_recipients = 3
    send(session, "EHLO x", "MAIL FROM:<a@example.com>",
         *(f"RCPT TO:<alice+{n}@example.org>" for n in range(3)))
    for number in range(OVERSHOOT_LIMIT + HARD_ERROR_LIMIT):
        step = session.feed_line(f"RCPT TO:<alice+x{number}@example.org>\r\n".encode())
        assert step.replies == [replies.TOO_MANY_RECIPIENTS], number
    step = session.feed_line(b"RCPT TO:<alice+last@example.org>\r\n")
    assert [r.code for r in step.replies] == [452, 421] and step.action is Action.CLOSE


@pytest.mark.parametrize("listener, lines, refusal", [
    ("smtp", ["MAIL FROM:<a@example.com> SIZE=99999999"], replies.MESSAGE_TOO_BIG),
    ("submission", ["MAIL FROM:<a@example.com>"], replies.AUTH_REQUIRED),
    ("smtp", ["AUTH PLAIN AGJoYXlkZW4AeA=="], replies.ENCRYPTION_REQUIRED),
])
def test_other_repeated_refusals_end_the_session_too(make, listener, lines, refusal):
    session = make(listener=listener, tls_configured=False)
    send(session, "EHLO x")
    answers = []
    for _ in range(OVERSHOOT_LIMIT + HARD_ERROR_LIMIT + 5):
        step = session.feed_line(lines[0].encode() + b"\r\n")
        answers.append(step.replies)
        if step.action is Action.CLOSE:
            break
    assert answers[:-1] == [[refusal]] * (OVERSHOOT_LIMIT + HARD_ERROR_LIMIT)
    assert [r.code for r in answers[-1]] == [refusal.code, 421]


def test_a_repeated_refusal_is_logged_a_few_times_then_summed_up(logged):
    session, log = logged(ip="10.0.0.1")
    send(session, "EHLO x", "MAIL FROM:<a@example.com>",
         *(f"RCPT TO:<alice+{n}@example.org>" for n in range(3)))
    for number in range(200):
        assert reply_of(session, f"RCPT TO:<bob{number}@gmail.example>").code == 452
    assert len(log.events("rcpt_refused")) == LOGGED_REFUSALS
    session.close()
    [summary] = log.events("refused_repeatedly")
    assert "refusal=rcpt_refused reply=452 count=200" in summary
    assert log.events("disconnect")


def test_idle_means_no_transaction_no_data_no_auth(make):
    session = make(tls=TLS)
    assert session.idle                                      # greeted
    send(session, "EHLO x")
    assert session.idle
    send(session, "MAIL FROM:<a@example.com>")
    assert not session.idle                                  # a transaction
    send(session, "RCPT TO:<alice@example.org>", "DATA")
    assert not session.idle                                  # inside DATA
    data(session, b".\r\n")
    assert session.idle
    send(session, "AUTH LOGIN")
    assert not session.idle                                  # inside an AUTH exchange


def test_international_domains_need_smtputf8(make):
    session = make(ip="10.0.0.1")                            # trusted: may relay
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    assert reply_of(session, "RCPT TO:<x@bücher.example>") == replies.NEEDS_SMTPUTF8
    send(session, "RSET")
    assert reply_of(session, "MAIL FROM:<x@bücher.example>") == replies.NEEDS_SMTPUTF8
    assert reply_of(session, "MAIL FROM:<x@bücher.example> SMTPUTF8") == replies.SENDER_OK
    assert reply_of(session, "RCPT TO:<x@bücher.example>") == replies.RECIPIENT_OK
    [(address, resolution)] = session.transaction.recipients
    assert address.domain == "xn--bcher-kva.example" and resolution.result == "remote"


def test_an_internal_error_that_repeats_counts_towards_the_error_limit(make, monkeypatch):
    session = make(ip="10.0.0.1")
    send(session, "EHLO x", "MAIL FROM:<a@example.com>")
    monkeypatch.setattr(session.router, "resolve", lambda address: 1 / 0)
    for _ in range(HARD_ERROR_LIMIT):
        assert reply_of(session, "RCPT TO:<alice@example.org>") == replies.LOCAL_ERROR
        send(session, "MAIL FROM:<a@example.com>")           # the error dropped the transaction
    step = session.feed_line(b"RCPT TO:<alice@example.org>\r\n")
    assert [r.code for r in step.replies] == [451, 421] and step.action is Action.CLOSE


def test_commands_that_do_nothing_count_past_the_junk_limit(make):
    session = make(ip="10.0.0.1")
    for number in range(JUNK_COMMAND_LIMIT + HARD_ERROR_LIMIT):
        step = session.feed_line(b"NOOP\r\n")
        assert step.replies == [replies.OK] and step.action is Action.NONE, number
    assert session.budget.errors == HARD_ERROR_LIMIT
    step = session.feed_line(b"RSET\r\n")
    assert [r.code for r in step.replies] == [250, 421] and step.action is Action.CLOSE


def test_under_stress_a_second_command_that_does_nothing_counts(make):
    session = make()
    session.services.connections.stressed = True
    send(session, "EHLO x", "NOOP", "NOOP")
    assert session.budget.errors == 2
