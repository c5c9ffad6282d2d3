"""Denial of service by one client, and a fast shutdown (issue 11): what a client
on loopback could do to the real server, each checked to fail on the code
before the fix. Timeouts are short, loops bounded; nothing leaves 127.0.0.1."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lib.core import replies
from lib.session.engine import HARD_ERROR_LIMIT, LOGGED_REFUSALS, OVERSHOOT_LIMIT

from ..helpers.cli import ROOT
from ..helpers.clients import Pop3Client, SmtpClient, smtplib_client
from ..helpers.logs import events, settled_events
from ..helpers.mail import message
from ..helpers.net import HOST
from ..helpers.waiting import wait_until

STRANGER = "192.0.2.0/24"          # trusted networks that leave 127.0.0.1 a stranger
TIMEOUT = "command_timeout = 1s\n"  # what the slowloris tests give a command
SLOW = 0.3                         # seconds between the bytes of a trickling client
TRICKLE_FOR = 6.0                  # how long a trickle goes on before the test gives up


def trickle(client, data: bytes, every: float = SLOW, limit: float = TRICKLE_FOR) -> float:
    """Send `data` one byte every `every` seconds until the server closes the
    connection; the seconds that took (fails after `limit`). What the server
    answered meanwhile stays in client.buf."""
    started = time.monotonic()
    for octet in data:
        assert time.monotonic() - started < limit, \
            f"still open after {limit}s of trickling: {client.buf[-200:]!r}"
        try:
            client.send(bytes([octet]))
        except OSError:                            # closed under us: that is the point
            return time.monotonic() - started
        readable, _, _ = select.select([client.sock], [], [], every)
        if readable and not client._fill():
            return time.monotonic() - started
    raise AssertionError(f"ran out of data, still open: {client.buf[-200:]!r}")


def open_data(client: SmtpClient) -> None:
    client.greet()
    for line, code in (("MAIL FROM:<sender@example.com>", 250),
                       ("RCPT TO:<alice@example.org>", 250), ("DATA", 354)):
        answer = client.cmd(line)
        assert answer.code == code, f"{line}: {answer}"


# ---------------------------------------------------------------- 1. slowloris

def test_a_command_line_trickled_byte_by_byte_is_cut_off(servers, raw_smtp):
    server = servers(limits=TIMEOUT)
    client = raw_smtp(server)
    client.greet()
    took = trickle(client, b"NOOP\r\n" * 10)      # each line takes 1.5 s: never in time
    assert took < 3.0, took
    assert client.buf.startswith(replies.TIMEOUT.fill(host="mail.example.org").to_bytes())
    assert b"250" not in client.buf


def test_data_trickled_below_the_minimum_rate_is_cut_off(servers, raw_smtp):
    server = servers(limits=TIMEOUT)
    client = raw_smtp(server)
    open_data(client)
    took = trickle(client, b"Subject: slow\r\n\r\n" + b"x" * 100)
    assert took < 3.0, took
    assert client.buf.startswith(b"421 4.4.2 ")
    assert server.messages("alice") == []


def test_a_slow_link_that_keeps_up_the_rate_is_not_cut_off(servers, raw_smtp):
    """DATA may take longer than command_timeout when the octets keep coming."""
    server = servers(limits="command_timeout = 2s\n")
    client = raw_smtp(server)
    open_data(client)
    started = time.monotonic()
    while time.monotonic() - started < 3.0:       # 2 KB every 0.5 s: 4 KB/s
        client.send((b"z" * 78 + b"\r\n") * 25)
        time.sleep(0.5)
    client.send(b".\r\n")
    client.expect(replies.ACCEPTED)
    assert len(server.messages("alice")) == 1


def test_a_pop3_command_trickled_byte_by_byte_is_cut_off(servers):
    server = servers(listen={"pop3": "127.0.0.1:0"}, limits=TIMEOUT)
    with Pop3Client(server.port("pop3")) as client:
        client.greeting()
        took = trickle(client, b"CAPA\r\n" * 10)
        assert took < 3.0, took
        assert client.buf.startswith(replies.POP_TIMEOUT.to_bytes()), client.buf[:100]


def test_near_the_cap_idle_strangers_get_the_stress_timeout(servers, raw_smtp):
    server = servers(trusted=STRANGER, limits="""
        command_timeout = 30s
        stress_timeout = 1s
        greet_pause = 0
        max_connections = 10
        max_connections_per_ip = 50
        """)
    idle = [raw_smtp(server) for _ in range(6)]        # 6 of the strangers' 7 slots: > 80 %
    for client in idle:
        assert client.reply().code == 220
    server.wait_for_log("event=stress state=on")
    started = time.monotonic()
    server.wait_for_log("event=stress state=off", timeout=4.0)   # not after 30 s
    assert time.monotonic() - started < 4.0
    timed_out = [client for client in idle if not client.nothing_pending(0.3)]
    assert len(timed_out) >= 2                         # down to 60 %: the stress is over
    for client in timed_out:
        client.expect(replies.TIMEOUT)
    for client in idle:
        if client not in timed_out:                    # the others keep command_timeout
            assert client.cmd("NOOP").is_(replies.OK)


# ---------------------------------------------------------------- 2. one cap for all listeners

def test_strangers_on_port_25_cannot_take_the_households_slots(servers):
    server = servers(listen={"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0",
                             "pop3": "127.0.0.1:0"},
                     trusted=STRANGER, limits="max_connections = 10\nmax_connections_per_ip = 50\n")
    flood = [SmtpClient(server.port("smtp")) for _ in range(10)]
    try:
        answers = [client.reply() for client in flood]   # greet_pause: about 1 s for all
        assert [a.code for a in answers] == [220] * 7 + [421] * 3, [str(a) for a in answers]
        assert answers[-1].is_(replies.TOO_MANY_CONNECTIONS)
        household = [Pop3Client(server.port("pop3")) for _ in range(2)]
        for pop in household:
            pop.greeting()
        with SmtpClient(server.port("submission")) as submission:
            assert submission.reply().code == 220
            with Pop3Client(server.port("pop3")) as over:     # 10 in all: the total cap holds
                assert over.line().startswith(b"-ERR [SYS/TEMP]")
        for pop in household:
            pop.close()
    finally:
        for client in flood:
            client.close()


# ---------------------------------------------------------------- 3. refusals that never counted

def test_recipients_past_the_limit_end_the_session_and_are_logged_once(servers, raw_smtp):
    server = servers(limits="max_recipients = 2\n", log_level="info")
    client = raw_smtp(server)
    client.greet()
    client.send(b"MAIL FROM:<sender@example.com>\r\n" +
                b"".join(b"RCPT TO:<alice+%d@example.org>\r\n" % n for n in range(1100)))
    answers = client.replies_until_closed(limit=1100)
    codes = [a.code for a in answers]
    refused = OVERSHOOT_LIMIT + HARD_ERROR_LIMIT + 1
    assert codes == [250] * 3 + [452] * refused + [421], (len(codes), codes[-5:])
    assert answers[-1].is_(replies.TOO_MANY_ERRORS)
    assert len(settled_events(server, "rcpt_refused")) == LOGGED_REFUSALS
    [summary] = events(server, "refused_repeatedly")
    assert (summary["reply"], summary["count"]) == ("452", str(refused))


def test_repeated_auth_required_ends_a_submission_session(servers):
    server = servers(listen={"submission": "127.0.0.1:0"}, log_level="info")
    with SmtpClient(server.port("submission")) as client:
        client.greet()
        client.send(b"MAIL FROM:<sender@example.com>\r\n" * 1100)
        answers = client.replies_until_closed(limit=1100)
    assert [a.code for a in answers[:-1]] == [530] * (OVERSHOOT_LIMIT + HARD_ERROR_LIMIT + 1)
    assert answers[-1].is_(replies.TOO_MANY_ERRORS)
    assert len(settled_events(server, "mail_refused")) == LOGGED_REFUSALS


# ---------------------------------------------------------------- 4. the tarpit

def test_past_ten_errors_every_reply_to_a_stranger_waits(servers, raw_smtp):
    server = servers(trusted=STRANGER)                   # error_sleep: 1 s by default
    client = raw_smtp(server)
    client.greet()
    assert client.cmd("MAIL FROM:<sender@example.com>").code == 250
    took = []
    for number in range(11):
        started = time.monotonic()
        client.cmd(f"RCPT TO:<probe{number}@example.org>").assert_is(replies.NO_SUCH_USER)
        took.append(time.monotonic() - started)
    assert max(took[:10]) < 0.5, took
    assert took[10] >= 0.9, took


def test_probing_addresses_gets_twenty_answers_a_connection_at_a_crawl(servers, raw_smtp):
    server = servers(trusted=STRANGER, limits="error_sleep = 0.1s\ngreet_pause = 0\n")
    client = raw_smtp(server)
    client.greet()
    assert client.cmd("MAIL FROM:<sender@example.com>").code == 250
    started = time.monotonic()
    client.send(b"".join(b"RCPT TO:<probe%d@example.org>\r\n" % n for n in range(1000)))
    answers = client.replies_until_closed(limit=1000)
    took = time.monotonic() - started
    assert [a.code for a in answers] == [550] * (HARD_ERROR_LIMIT + 1) + [421]
    assert took >= 0.1 * (HARD_ERROR_LIMIT - 10), took      # the tarpit's share


# ---------------------------------------------------------------- 5. early talkers and pipelining

def test_a_client_talking_before_the_greeting_is_refused(servers):
    server = servers(trusted=STRANGER)                  # greet_pause: 1 s by default
    with SmtpClient(server.port()) as client:
        client.send(b"EHLO spam.example\r\nMAIL FROM:<sender@example.com>\r\n"
                    b"RCPT TO:<alice@example.org>\r\nDATA\r\n" + message("early", "hi") +
                    b".\r\nQUIT\r\n")
        answers = client.replies_until_closed()
    assert len(answers) == 1 and answers[0].is_(replies.PROTOCOL_SYNC), [str(a) for a in answers]
    assert server.messages("alice") == []
    assert settled_events(server, "pregreet")


@pytest.mark.parametrize("burst", [
    b"EHLO spam.example\r\nMAIL FROM:<sender@example.com>\r\n",
    b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<alice@example.org>\r\n"
    b"DATA\r\nSubject: early\r\n\r\nhi\r\n.\r\n",
])
def test_a_stranger_pipelining_where_rfc_2920_forbids_it_is_refused(servers, raw_smtp, burst):
    server = servers(trusted=STRANGER)
    client = raw_smtp(server)
    assert client.reply().code == 220
    if burst.startswith(b"MAIL"):
        assert client.cmd("EHLO client.example").code == 250
    client.send(burst)
    answers = client.replies_until_closed()
    assert answers[-1].is_(replies.PROTOCOL_SYNC), [str(a) for a in answers]
    assert all(a.code == 250 for a in answers[:-1])
    assert server.messages("alice") == []


def test_legal_pipelining_by_strangers_and_any_pipelining_by_the_trusted_go_on(servers):
    for trusted in (STRANGER, "127.0.0.0/8"):
        server = servers(name=f"server-{trusted[:3]}", trusted=trusted)
        with SmtpClient(server.port()) as client:
            assert client.reply().code == 220
            group = (b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<alice@example.org>\r\n"
                     b"RCPT TO:<bhayden@example.org>\r\nDATA\r\n")
            if trusted == STRANGER:                       # RFC 2920: EHLO ends its group
                assert client.cmd("EHLO client.example").code == 250
            else:
                group = b"EHLO client.example\r\n" + group
            client.send(group)
            assert [a.code for a in client.replies(group.count(b"\r\n"))][-4:] == \
                [250, 250, 250, 354]
            client.send(message("pipelined", "hi") + b".\r\nQUIT\r\n")
            client.expect(replies.ACCEPTED)
            client.expect(replies.BYE)
        assert len(server.messages("alice")) == 1
        with smtplib_client(server.port()) as smtp:     # what real clients do
            smtp.sendmail("sender@example.com", ["alice@example.org"], message("smtplib", "x"))
        assert len(server.messages("alice")) == 2


def test_swaks_pipelining_as_a_stranger_still_delivers(servers):
    """swaks --pipeline sends MAIL, RCPT and DATA in one go: RFC 2920 allows it."""
    server = servers(trusted=STRANGER)
    result = subprocess.run(["swaks", "--pipeline", "--helo", "swaks.example.com", "--timeout",
                             "20", "--server", HOST, "--port", str(server.port()),
                             "--from", "sender@example.com", "--to", "alice@example.org"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "PIPELINING" in result.stdout and len(server.messages("alice")) == 1


# ---------------------------------------------------------------- 6. international domains

def test_the_idna_codec_works_once_imports_are_impossible():
    """After the switch to [server] user the Python installation may be unreadable:
    everything an international domain needs must be loaded before it."""
    script = textwrap.dedent("""
        import sys, types
        from lib.server import daemon
        config = types.SimpleNamespace(relay=types.SimpleNamespace(mode="smarthost"))
        daemon._import_before_dropping_root(config)

        class NoMoreImports:
            def find_spec(self, name, path=None, target=None):
                raise ImportError(f"{name} imported after the switch of user")

        sys.meta_path.insert(0, NoMoreImports())
        from lib.core.addresses import parse_path
        address, _ = parse_path("<x@b\\u00fccher.example>", utf8=True)
        assert address.domain == "xn--bcher-kva.example", address
        assert b"xn--bcher-kva.example".decode("idna") == "b\\u00fccher.example"
        print("ok")
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-2000:]


def test_an_international_domain_needs_smtputf8(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    client.cmd("MAIL FROM:<sender@example.com>").assert_is(replies.SENDER_OK)
    client.cmd("RCPT TO:<x@bücher.example>").assert_is(replies.NEEDS_SMTPUTF8)
    client.cmd("RSET")
    client.cmd("MAIL FROM:<sender@example.com> SMTPUTF8").assert_is(replies.SENDER_OK)
    client.cmd("RCPT TO:<x@bücher.example>").assert_is(replies.RECIPIENT_OK)
    assert "Traceback" not in server.log_text()


# ---------------------------------------------------------------- 15. shutdown

def test_sigterm_with_only_idle_sessions_exits_at_once(servers):
    server = servers(listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"},
                     limits="max_connections_per_ip = 50\n")      # shutdown_grace: 10 s
    smtp = [SmtpClient(server.port("smtp")) for _ in range(10)]
    pop3 = [Pop3Client(server.port("pop3")) for _ in range(10)]
    try:
        for number, client in enumerate(smtp):
            client.greet() if number % 2 else client.reply()
        for number, client in enumerate(pop3):
            client.greeting()
            if number % 2:
                assert client.ask(b"USER alice").startswith(b"+OK")
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.process.wait(10)
        took = time.monotonic() - started
        assert code == 0
        assert took < 2.0, f"took {took:.1f}s to stop with only idle sessions"
        for client in smtp:
            client.expect(replies.SHUTTING_DOWN)
            client.assert_closed()
        for client in pop3:
            assert client.line() == replies.POP_SHUTTING_DOWN.to_bytes()[:-2]
            assert client.line() is None
    finally:
        for client in smtp + pop3:
            client.close()


def test_sigterm_tells_idle_sessions_at_once_and_lets_a_message_finish(servers):
    server = servers(limits="shutdown_grace = 5s\n")
    idle = SmtpClient(server.port())
    sending = SmtpClient(server.port())
    try:
        idle.greet()
        open_data(sending)
        sending.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        server.send_signal(signal.SIGTERM)
        started = time.monotonic()
        idle.expect(replies.SHUTTING_DOWN)
        assert time.monotonic() - started < 1.5
        time.sleep(0.5)
        sending.send(b"second half\r\n.\r\n")
        sending.expect(replies.ACCEPTED)
        assert server.process.wait(10) == 0
        assert time.monotonic() - started < 3.0
    finally:
        idle.close()
        sending.close()
    assert len(server.messages("alice")) == 1


def test_a_newcomer_during_the_shutdown_is_refused(servers):
    server = servers(limits="shutdown_grace = 3s\n")
    sending = SmtpClient(server.port())
    try:
        open_data(sending)
        server.send_signal(signal.SIGTERM)
        server.wait_for_log("event=stopping")
        wait_until(lambda: _refused_or_closed(server.port()), 5.0,
                   what="new connections refused while stopping")
    finally:
        sending.close()
    assert server.process.wait(10) == 0


def _refused_or_closed(port: int) -> bool:
    try:
        with SmtpClient(port, HOST, timeout=2) as client:
            first = client.reply()
    except (OSError, AssertionError):
        return True                                    # the listener is gone
    return first.is_(replies.SHUTTING_DOWN)
