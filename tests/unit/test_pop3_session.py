"""The POP3 engine driven with no sockets: every command in every state."""

from __future__ import annotations

import base64

import pytest

from lib.config.tls import TlsInfo
from lib.core import replies, wire
from lib.core.replies import PopContinue, PopReply
from lib.pop3.session import COMMANDS, Pop3Session, State
from lib.session.engine import HARD_ERROR_LIMIT, OVERSHOOT_LIMIT, Action, ClientInfo
from lib.session.runtime import Services, load_runtime
from lib.store.maildir import MaildirStore

from ..support import BASE_INI, PASSWORD, ini

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


@pytest.fixture
def setup(tmp_path, certificate):
    def build(extra: str = ""):
        path = tmp_path / "pop.ini"
        tls = f"\n[tls]\ncert = {certificate[0]}\nkey = {certificate[1]}\n"
        path.write_text(ini(BASE_INI) + tls + extra)
        runtime = load_runtime(path)
        return runtime, Services.create(runtime.config)
    return build


@pytest.fixture
def env(setup):
    return setup()


def session_for(env, ip="192.0.2.9", tls=TLS):
    runtime, services = env
    session = Pop3Session(runtime, services, ClientInfo(ip, 1, "pop3", tls))
    assert session.greeting().replies[0].ok
    return session


def say(session, line: str):
    step = session.feed_line(line.encode() + b"\r\n")
    body = b"".join(step.body) if step.body is not None else None
    return step, body


def reply(session, line: str) -> PopReply:
    step, _ = say(session, line)
    assert len(step.replies) == 1
    return step.replies[0]


def deliver(env, mailbox: str, data: bytes) -> str:
    return env[1].store.deliver([mailbox], data)[mailbox]


def logged_in(env, mailbox="alice"):
    session = session_for(env)
    assert reply(session, f"USER {mailbox}").ok
    assert reply(session, f"PASS {PASSWORD}").ok
    assert session.state is State.TRANSACTION
    return session


def test_capa_before_and_after_tls(env):
    plain = session_for(env, tls=None)
    step, body = say(plain, "CAPA")
    lines = body.decode().split("\r\n")
    assert step.replies[0].ok and lines[-2:] == [".", ""]
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
                "IMPLEMENTATION mailbox_appliance"):
        assert cap in lines
    assert "USER" not in lines and "SASL PLAIN" not in lines     # no TLS, not loopback
    secure = session_for(env)
    lines = say(secure, "CAPA")[1].decode().split("\r\n")
    assert "USER" in lines and "SASL PLAIN" in lines and "STLS" not in lines


def test_transaction_commands_need_login(env):
    session = session_for(env)
    for command in ("STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP"):
        answer = reply(session, command)
        assert not answer.ok, command


def test_authorization_commands_refused_after_login(env):
    session = logged_in(env)
    for command in ("USER alice", f"PASS {PASSWORD}", "AUTH PLAIN", "STLS"):
        assert not reply(session, command).ok, command


def test_unknown_commands_and_error_budget(env):
    session = session_for(env)
    for _ in range(20):
        assert reply(session, "XYZZY") == PopReply(False, "Unknown command")
    step, _ = say(session, "XYZZY")
    assert step.action is Action.CLOSE and len(step.replies) == 2


def test_nul_and_line_too_long(env):
    session = session_for(env)
    assert not session.feed_line(b"US\0ER x\r\n").replies[0].ok
    assert not session.line_too_long().replies[0].ok
    assert session.max_line == wire.MAX_POP3_LINE


def test_plaintext_login_refused_without_tls(env):
    session = session_for(env, tls=None)
    assert reply(session, "USER alice").code == "AUTH"
    assert reply(session, f"PASS {PASSWORD}").code == "AUTH"
    assert reply(session, "AUTH PLAIN").code == "AUTH"


def test_loopback_may_log_in_without_tls(env):
    session = session_for(env, ip="127.0.0.1", tls=None)
    assert reply(session, "USER alice").ok and reply(session, f"PASS {PASSWORD}").ok


def test_user_pass(env):
    deliver(env, "alice", b"Subject: a\n\nbody\n")
    session = session_for(env)
    assert not reply(session, f"PASS {PASSWORD}").ok               # USER first
    assert reply(session, "USER nobody").ok                        # no hint it is unknown
    answer = reply(session, f"PASS {PASSWORD}")
    assert (answer.ok, answer.code) == (False, "AUTH")
    reply(session, "USER Alice@Example.ORG")
    assert reply(session, f"PASS {PASSWORD}").text.startswith("alice has 1 messages")


def test_password_with_spaces(env):
    session = session_for(env)
    reply(session, "USER alice")
    assert reply(session, f"PASS {PASSWORD}").ok                   # "correct horse"
    assert " " in PASSWORD


def test_auth_plain(env):
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    session = session_for(env)
    assert reply(session, f"AUTH PLAIN {token}").ok
    session.close()
    session = session_for(env)
    assert reply(session, "AUTH PLAIN") == PopContinue()
    assert session.state is State.AUTH and session.max_line == wire.MAX_SASL_LINE
    assert reply(session, token).ok
    session = session_for(env)
    reply(session, "AUTH PLAIN")
    assert reply(session, "*").text == "Authentication cancelled"
    assert session.state is State.AUTHORIZATION
    assert not reply(session, "AUTH CRAM-MD5").ok
    assert not reply(session, "AUTH PLAIN %%%").ok
    step, body = say(session, "AUTH")
    assert body == b"PLAIN\r\n.\r\n"


def test_lockout(env):
    session = session_for(env)
    for _ in range(5):
        reply(session, "USER alice")
        assert reply(session, "PASS wrong").code == "AUTH"
    reply(session, "USER alice")
    assert reply(session, f"PASS {PASSWORD}").code == "SYS/TEMP"


def test_in_use(env):
    first = logged_in(env)
    second = session_for(env)
    reply(second, "USER alice")
    answer = reply(second, f"PASS {PASSWORD}")
    assert (answer.ok, answer.code) == (False, "IN-USE")
    assert reply(first, "NOOP").ok
    first.close("client vanished")
    reply(second, "USER alice")
    assert reply(second, f"PASS {PASSWORD}").ok


def test_stat_list_uidl_retr_sizes_match(env):
    messages = [b"Subject: one\n\n.dot\nbody\n", b"Subject: two\r\n\r\n..x\r\nno end"]
    for data in messages:
        deliver(env, "alice", data)
    session = logged_in(env)
    count, size = reply(session, "STAT").text.split()
    _, listing = say(session, "LIST")
    sizes = [int(line.split()[1]) for line in listing.decode().split("\r\n")[:-2]]
    assert int(count) == 2 and int(size) == sum(sizes)
    for number, expected in enumerate(messages, start=1):
        step, body = say(session, f"RETR {number}")
        assert step.replies[0].text == f"{sizes[number - 1]} octets"
        assert body.endswith(b"\r\n.\r\n")
        unstuffed = body[:-3].replace(b"\r\n..", b"\r\n.")
        assert len(unstuffed) == sizes[number - 1]
        assert unstuffed.endswith(expected.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                                  .rstrip(b"\r\n") + b"\r\n")
    assert b"\r\n..dot\r\n" in say(session, "RETR 1")[1]
    assert reply(session, "LIST 2").text == f"2 {sizes[1]}"
    uid = reply(session, "UIDL 1").text.split()[1]
    _, uids = say(session, "UIDL")
    assert uids.startswith(f"1 {uid}\r\n".encode())


def test_bad_message_numbers(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    for command in ("RETR", "RETR x", "RETR 0", "RETR 2", "LIST 9", "UIDL -1", "DELE 5",
                    "TOP 1", "TOP 1 x", "TOP 7 1"):
        assert not reply(session, command).ok, command


def test_dele_rset_and_quit(env):
    for n in range(3):
        deliver(env, "alice", b"Subject: %d\n\nx\n" % n)
    session = logged_in(env)
    assert reply(session, "DELE 2").ok
    assert reply(session, "DELE 2").text == "Message already deleted"
    assert not reply(session, "RETR 2").ok
    assert reply(session, "STAT").text.startswith("2 ")
    _, listing = say(session, "LIST")
    assert listing.startswith(b"1 ") and b"\r\n3 " in listing and b"\r\n2 " not in listing
    assert reply(session, "RSET").ok and reply(session, "STAT").text.startswith("3 ")
    reply(session, "DELE 1")
    say(session, "RETR 3")
    step, _ = say(session, "QUIT")
    assert step.replies[0].ok and step.action is Action.CLOSE
    store: MaildirStore = env[1].store
    left = store.snapshot("alice")
    assert len(left) == 2
    assert sorted(p.path.parent.name for p in left) == ["cur", "new"]   # RETR 3 marked Seen
    assert any(p.path.name.endswith(":2,S") for p in left)


def test_dropped_connection_deletes_nothing(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    reply(session, "DELE 1")
    say(session, "RETR 1")
    session.close("connection reset")
    assert len(env[1].store.snapshot("alice")) == 1
    again = logged_in(env)                         # and the lock is free again
    assert reply(again, "STAT").text.startswith("1 ")


def test_timeout_and_shutdown_delete_nothing(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    reply(session, "DELE 1")
    step = session.timeout()
    assert step.action is Action.CLOSE and not step.replies[0].ok
    session = logged_in(env)
    reply(session, "DELE 1")
    assert session.shutdown().replies[0].code == "SYS/TEMP"
    assert len(env[1].store.snapshot("alice")) == 1


def test_snapshot_is_fixed_for_the_session(env):
    deliver(env, "alice", b"first\n")
    session = logged_in(env)
    deliver(env, "alice", b"second\n")
    assert reply(session, "STAT").text.startswith("1 ")
    session.close()
    assert reply(logged_in(env), "STAT").text.startswith("2 ")


def test_top(env):
    deliver(env, "alice", b"Subject: t\nX: y\n\nl1\n.l2\nl3\nl4\n")
    session = logged_in(env)
    _, body = say(session, "TOP 1 0")
    assert body == b"Subject: t\r\nX: y\r\n\r\n.\r\n"
    _, body = say(session, "TOP 1 2")
    assert body == b"Subject: t\r\nX: y\r\n\r\nl1\r\n..l2\r\n.\r\n"
    _, body = say(session, "TOP 1 100")
    assert body.endswith(b"l4\r\n.\r\n")


def test_stls(env):
    session = session_for(env, tls=None)
    step, _ = say(session, "STLS")
    assert step.replies[0].ok and step.action is Action.START_TLS
    reply(session, "USER alice")
    session.tls_started(TLS)
    assert session.user_name is None                # forgotten, as RFC 2595 asks
    assert not reply(session, "STLS").ok


def test_quit_in_authorization(env):
    session = session_for(env)
    step, _ = say(session, "QUIT")
    assert step.replies[0].ok and step.action is Action.CLOSE
    assert session.state is State.CLOSED


def test_every_command_is_in_the_table():
    assert set(COMMANDS) == {"CAPA", "STLS", "USER", "PASS", "AUTH", "QUIT", "STAT", "LIST",
                             "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP"}


def test_vanished_message_is_a_temporary_error(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    for message in session.messages:
        message.path.unlink()
    answer = reply(session, "RETR 1")
    assert (answer.ok, answer.code) == (False, "SYS/TEMP")


def test_non_ascii_digits_are_not_message_numbers(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    for command in ("RETR ²", "LIST ١", "TOP 1 ²", "DELE ²"):
        answer = reply(session, command)
        assert not answer.ok, command
    assert reply(session, "STAT").ok


def test_an_internal_error_is_answered_and_the_session_goes_on(env, monkeypatch):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    monkeypatch.setattr(session, "_totals", lambda: 1 / 0)
    assert reply(session, "STAT").code == "SYS/TEMP"
    assert reply(session, "NOOP").ok


def test_wire_output_of_every_reply(env):
    """Every reply the engine can give, byte for byte: clients parse these."""
    deliver(env, "alice", b"Subject: one\n\nbody\n")
    session = session_for(env, tls=None, ip="127.0.0.1")

    def wire_of(line: str) -> bytes:
        step = session.feed_line(line.encode() + b"\r\n")
        return b"".join(reply.to_bytes() for reply in step.replies)
    plain_token = base64.b64encode(b"\0alice\0nope").decode()
    transcript = [
        ("CAPA", b"+OK Capability list follows\r\n"),
        ("STAT", b"-ERR Command not valid in this state\r\n"),
        ("XYZZY", b"-ERR Unknown command\r\n"),
        ("USER", b"-ERR USER needs a name\r\n"),
        ("PASS x", b"-ERR USER first\r\n"),
        ("AUTH", b"+OK Methods follow\r\n"),
        ("AUTH CRAM-MD5", b"-ERR Unsupported authentication mechanism\r\n"),
        ("AUTH PLAIN %%", b"-ERR Cannot decode the credentials: not valid base64\r\n"),
        ("AUTH PLAIN", b"+ \r\n"),
        ("*", b"-ERR Authentication cancelled\r\n"),
        (f"AUTH PLAIN {plain_token}", b"-ERR [AUTH] Authentication failed\r\n"),
        ("STLS", b"+OK Begin TLS negotiation\r\n"),
        ("USER alice", b"+OK Send the password\r\n"),
        (f"PASS {PASSWORD}", b"+OK alice has 1 messages (22 octets)\r\n"),
        ("STAT", b"+OK 1 22\r\n"),
        ("LIST", b"+OK 1 messages (22 octets)\r\n"),
        ("LIST 1", b"+OK 1 22\r\n"),
        ("LIST x", b"-ERR Message number required\r\n"),
        ("LIST 2", b"-ERR No such message\r\n"),
        ("UIDL", b"+OK Unique-ID listing follows\r\n"),
        ("RETR 1", b"+OK 22 octets\r\n"),
        ("TOP 1", b"-ERR TOP needs a message number and a line count\r\n"),
        ("TOP 1 0", b"+OK Top of message follows\r\n"),
        ("NOOP", b"+OK\r\n"),
        ("DELE 1", b"+OK Message 1 marked for deletion\r\n"),
        ("DELE 1", b"-ERR Message already deleted\r\n"),
        ("RSET", b"+OK Maildrop has 1 messages (22 octets)\r\n"),
        ("USER alice", b"-ERR Command not valid in this state\r\n"),
        ("DELE 1", b"+OK Message 1 marked for deletion\r\n"),
        ("QUIT", b"+OK Bye (1 deleted, 0 left)\r\n"),
    ]
    assert [(line, wire_of(line)) for line, _ in transcript] == transcript
    assert session.feed_line(b"NOOP\r\n").replies == []


def test_wire_output_of_refusals(env):
    deliver(env, "alice", b"x\n")
    assert session_for(env).feed_line(b"US\0ER\r\n").replies[0].to_bytes() == \
        b"-ERR NUL character in command\r\n"
    plain = session_for(env, tls=None)
    assert plain.feed_line(b"USER alice\r\n").replies[0].to_bytes() == \
        b"-ERR [AUTH] Plaintext authentication is not allowed without TLS: use STLS\r\n"
    secure = session_for(env)
    assert secure.feed_line(b"STLS\r\n").replies[0].to_bytes() == \
        b"-ERR TLS is already active\r\n"
    first = logged_in(env)
    second = session_for(env)
    reply(second, "USER alice")
    assert second.feed_line(f"PASS {PASSWORD}\r\n".encode()).replies[0].to_bytes() == \
        b"-ERR [IN-USE] Mailbox is in use by another session\r\n"
    for message in first.messages:
        message.path.unlink()
    assert first.feed_line(b"RETR 1\r\n").replies[0].to_bytes() == \
        b"-ERR [SYS/TEMP] Message vanished from the mailbox\r\n"
    assert first.line_too_long().replies[0].to_bytes() == b"-ERR Line too long\r\n"


def test_refusals_count_towards_the_error_budget_only_when_they_are_protocol_errors(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    for _ in range(30):                             # no such message: not counted (yet)
        assert reply(session, "RETR 9") == replies.POP_NO_SUCH_MESSAGE
    assert session.budget.errors == 0 and session.budget.refusals == 30
    for _ in range(20):
        assert reply(session, "USER x") == replies.POP_WRONG_STATE
    step, _ = say(session, "PASS x")
    assert step.replies == [replies.POP_WRONG_STATE, replies.POP_TOO_MANY_ERRORS]
    assert step.action is Action.CLOSE and session.state is State.CLOSED


def test_every_way_out_of_auth_returns_to_authorization(env, monkeypatch):
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    for way_out in ("*", "%%", token, "overlong", "internal error"):
        session = session_for(env)
        assert reply(session, "AUTH PLAIN") == PopContinue()
        if way_out == "overlong":
            session.line_too_long()
        elif way_out == "internal error":
            monkeypatch.setattr(session.services.auth, "login", lambda *args: 1 / 0)
            assert reply(session, token) == replies.POP_SYS_TEMP
            monkeypatch.undo()
        else:
            reply(session, way_out)
        expected = State.TRANSACTION if way_out == token else State.AUTHORIZATION
        assert session.state is expected, way_out
        assert session.max_line == wire.MAX_POP3_LINE
        session.close()


# ---------------------------------------------------------------- abuse (issue 11)

def test_idle_is_between_commands_outside_auth(env):
    session = session_for(env)
    assert session.idle and session.greet_pause == 0.0
    assert reply(session, "AUTH PLAIN") == PopContinue()
    assert not session.idle                                  # inside the SASL exchange
    reply(session, "*")
    assert session.idle
    assert logged_in(env).idle                               # marks are only marks


def test_refusals_past_the_overshoot_limit_end_the_session(env):
    deliver(env, "alice", b"x\n")
    session = logged_in(env)
    for _ in range(OVERSHOOT_LIMIT + HARD_ERROR_LIMIT):
        assert reply(session, "RETR 9") == replies.POP_NO_SUCH_MESSAGE
    step, _ = say(session, "RETR 9")
    assert step.replies == [replies.POP_NO_SUCH_MESSAGE, replies.POP_TOO_MANY_ERRORS]
    assert step.action is Action.CLOSE and session.state is State.CLOSED


def test_an_internal_error_that_repeats_ends_the_session(env, monkeypatch):
    session = logged_in(env)
    monkeypatch.setattr(session, "_totals", lambda: 1 / 0)
    for _ in range(HARD_ERROR_LIMIT):
        assert reply(session, "STAT") == replies.POP_SYS_TEMP
    step, _ = say(session, "STAT")
    assert step.replies == [replies.POP_SYS_TEMP, replies.POP_TOO_MANY_ERRORS]
    assert step.action is Action.CLOSE
