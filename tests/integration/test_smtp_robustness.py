"""The real SMTP listener under hostile or broken clients, over real sockets.

Every test starts `mailbox_appliance.py serve` through the `servers` fixture
(a subprocess on 127.0.0.1, port 0) and talks to it with raw sockets, where
the exact bytes on the wire matter, or with smtplib. What is checked is what a
client and a mailbox owner can observe: the replies, the connection closing,
and the files in the Maildir.
"""

from __future__ import annotations

import random
import signal
import time
import uuid

import pytest

from lib.core import replies
from lib.smtp.session import MAX_BAD_COMMANDS

from ..helpers.clients import SmtpClient, smtplib_client, submit
from ..helpers.mail import content_of
from ..helpers.tls import client_context
from ..helpers.waiting import wait_until

NOTICE_TIMEOUT = 5.0         # how long the server may take to notice a vanished client


# ---------------------------------------------------------------- Maildir helpers

def delivered(server, mailbox: str = "bhayden") -> list[bytes]:
    return server.messages(mailbox)


def assert_tmp_emptied(server, mailbox: str = "bhayden") -> None:
    """The server notices the client is gone and removes the half-written file."""
    wait_until(lambda: not server.maildir_files(mailbox, "tmp"), NOTICE_TIMEOUT,
               what=f"{mailbox}/tmp emptied",
               detail=lambda: f"left: {[p.name for p in server.maildir_files(mailbox, 'tmp')]}"
                              f"\n{server.log_text()[-2000:]}")


def sample_message(token: str) -> bytes:
    """A CRLF message with a dot-led line, 8-bit text and a blank line inside."""
    return (f"From: Sender <sender@example.com>\r\n"
            f"To: bhayden@example.org\r\n"
            f"Subject: test {token}\r\n"
            f"Message-ID: <{token}@example.com>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"\r\n"
            f"Hello {token}.\r\n"
            f".a line that starts with a dot\r\n"
            f"\r\n"
            f"caf\u00e9 \u2014 tabs\there, trailing spaces   \r\n"
            f"last line\r\n").encode()


def assert_still_accepts_mail(server, mailbox: str = "bhayden") -> None:
    """A fresh connection delivers a normal message, stored byte for byte."""
    before = len(delivered(server, mailbox))
    token = uuid.uuid4().hex
    message = sample_message(token)
    submit(server.port("smtp"), "sender@example.com", ["bhayden@example.org"], message,
           mail_options=("BODY=8BITMIME",))
    after = delivered(server, mailbox)
    assert len(after) == before + 1, "the follow-up message was not delivered exactly once"
    [stored] = [m for m in after if token.encode() in m]
    assert content_of(stored) == message.replace(b"\r\n", b"\n")


def open_transaction(client: SmtpClient, rcpt: str = "bhayden@example.org") -> None:
    """Greeting, EHLO, MAIL, RCPT, DATA -> 354."""
    client.greet()
    client.send(f"MAIL FROM:<sender@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    client.expect(replies.SENDER_OK)
    client.expect(replies.RECIPIENT_OK)
    client.expect(replies.START_DATA)


# ---------------------------------------------------------------- 1. SMTP smuggling

SMUGGLING_VARIANTS = {
    "lf.lf": b"\n.\n",
    "cr.cr": b"\r.\r",
    "lf.crlf": b"\n.\r\n",
    "crlf.lf": b"\r\n.\n",
    "cr.crlf": b"\r.\r\n",
    "crlf.cr": b"\r\n.\r",
}


def smuggling_payload(fake_end: bytes, token: str) -> tuple[bytes, bytes]:
    """(message data up to the real end, the smuggled command text)."""
    smuggled = (b"MAIL FROM:<smuggler@evil.example>\r\n"
                b"RCPT TO:<bhayden@example.org>\r\n"
                b"DATA\r\n"
                b"From: smuggler@evil.example\r\n"
                b"Subject: smuggled " + token.encode() + b"\r\n"
                b"\r\n"
                b"I should not be a message of my own\r\n")
    head = (b"From: sender@example.com\r\n"
            b"To: bhayden@example.org\r\n"
            b"Subject: carrier " + token.encode() + b"\r\n"
            b"\r\n"
            b"carrier body")
    return head + fake_end + smuggled, smuggled


@pytest.mark.parametrize("fake_end", list(SMUGGLING_VARIANTS.values()),
                         ids=list(SMUGGLING_VARIANTS))
def test_smuggled_end_of_data_stays_inside_the_message(servers, raw_smtp, fake_end):
    server = servers()
    # Once in a single write, once with the fake end dribbled byte by byte so it
    # straddles the server's reads.
    for round_number, dribble in enumerate((False, True), start=1):
        token = uuid.uuid4().hex
        data, smuggled = smuggling_payload(fake_end, token)
        client = raw_smtp(server)
        open_transaction(client)
        if dribble:
            cut = data.index(fake_end)
            client.send(data[:cut])
            for byte in fake_end:
                time.sleep(0.03)
                client.send(bytes([byte]))
            time.sleep(0.03)
            client.send(data[cut + len(fake_end):] + b"\r\n.\r\nQUIT\r\n")
        else:
            client.send(data + b"\r\n.\r\nQUIT\r\n")
        answers = client.replies_until_closed()
        assert [(a.code, a.enhanced) for a in answers] == \
            [(250, replies.ACCEPTED.enhanced), (221, replies.BYE.enhanced)], \
            f"round {round_number}: {[str(a) for a in answers]}"
        messages = delivered(server)
        assert len(messages) == round_number, \
            f"round {round_number}: {len(messages)} messages in the mailbox"
        [stored] = [m for m in messages if token.encode() in m]
        assert stored.count(b"Subject: ") == 1 + 1   # the carrier's header + smuggled text
        assert b"MAIL FROM:<smuggler@evil.example>" in stored
        assert smuggled.replace(b"\r\n", b"\n") in content_of(stored), \
            "the smuggled commands and message are not intact inside the carrier"
        assert not any(b"smuggler" in m.split(b"\n\n", 1)[0] for m in messages), \
            "a message has the smuggler in its header: smuggling worked"
    assert delivered(server, "alice") == []


# ---------------------------------------------------------------- 2. STARTTLS injection

def test_starttls_drops_a_pipelined_rset(servers, raw_smtp, certificate):
    server = servers(tls=certificate)
    client = raw_smtp(server)
    ehlo = client.greet()
    assert "STARTTLS" in ehlo.lines
    client.send(b"STARTTLS\r\nRSET\r\n")
    client.expect(replies.READY_FOR_TLS)
    assert client.nothing_pending(), f"cleartext after the 220: {client.buf!r}"
    client.starttls(client_context(certificate[0]))
    # The first reply inside TLS answers our NOOP, not the injected RSET.
    first = client.cmd("NOOP")
    assert first.is_(replies.OK) and first.text == replies.OK.text, \
        f"first reply inside TLS: {first} (the injected RSET was answered)"
    # The session was reset: no EHLO yet.
    refused = client.cmd("MAIL FROM:<sender@example.com>")
    assert refused.is_(replies.BAD_SEQUENCE), f"MAIL before EHLO inside TLS: {refused}"
    ehlo = client.cmd("EHLO client.example")
    assert ehlo.code == 250 and "PIPELINING" in ehlo.lines
    assert "STARTTLS" not in ehlo.lines
    assert client.cmd("STARTTLS").code == replies.BAD_SEQUENCE.code
    client.send(b"QUIT\r\n")
    answers = client.replies_until_closed()
    assert [(a.code, a.enhanced) for a in answers] == [(221, replies.BYE.enhanced)], \
        [str(a) for a in answers]


def test_starttls_drops_a_pipelined_mail_from(servers, raw_smtp, certificate):
    server = servers(tls=certificate)
    client = raw_smtp(server)
    client.greet()
    client.send(b"STARTTLS\r\nMAIL FROM:<a@b.example>\r\n")
    client.expect(replies.READY_FOR_TLS)
    assert client.nothing_pending(), f"cleartext after the 220: {client.buf!r}"
    client.starttls(client_context(certificate[0]))
    first = client.cmd("EHLO client.example")
    assert first.code == 250, f"first reply inside TLS is not the EHLO answer: {first}"
    assert first.lines[0].startswith("mail.example.org Hello client.example"), \
        f"first reply inside TLS is not the EHLO answer: {first}"
    # The injected MAIL opened no transaction.
    rcpt = client.cmd("RCPT TO:<bhayden@example.org>")
    assert rcpt.is_(replies.BAD_SEQUENCE), f"RCPT -> {rcpt}: the injected MAIL FROM ran"
    # And the session works normally inside TLS.
    client.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<bhayden@example.org>\r\nDATA\r\n")
    client.expect(replies.SENDER_OK)
    client.expect(replies.RECIPIENT_OK)
    client.expect(replies.START_DATA)
    client.send(b"Subject: inside tls\r\n\r\nhello\r\n.\r\n")
    client.expect(replies.ACCEPTED)
    [stored] = delivered(server)
    assert b"a@b.example" not in stored
    assert b"Return-Path: <sender@example.com>" in stored


def test_mail_before_ehlo_after_starttls_is_a_bad_sequence(servers, raw_smtp, certificate):
    server = servers(tls=certificate)
    client = raw_smtp(server)
    client.greet()
    assert client.cmd("MAIL FROM:<sender@example.com>").is_(replies.SENDER_OK)
    # STARTTLS is refused inside a transaction ...
    assert client.cmd("STARTTLS").is_(replies.BAD_SEQUENCE)
    assert client.cmd("RSET").is_(replies.RESET_OK)
    assert client.cmd("STARTTLS").is_(replies.READY_FOR_TLS)
    client.starttls(client_context(certificate[0]))
    assert client.cmd("MAIL FROM:<sender@example.com>").code == replies.BAD_SEQUENCE.code
    assert client.cmd("RCPT TO:<bhayden@example.org>").code == replies.BAD_SEQUENCE.code


# ---------------------------------------------------------------- 3. overlong lines

def test_command_line_limit_is_512_octets(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    exactly = b"NOOP " + b"x" * (512 - len(b"NOOP ") - 2)
    assert len(exactly + b"\r\n") == 512
    assert client.cmd(exactly).is_(replies.OK)
    assert client.cmd(exactly + b"x").is_(replies.LINE_TOO_LONG)
    assert client.cmd(b"NOOP " + b"y" * 2000).is_(replies.LINE_TOO_LONG)
    assert client.cmd("NOOP").is_(replies.OK)
    # An overlong line in the middle of a pipelined group: one 500 for it, the rest answered.
    client.send(b"NOOP\r\nMAIL FROM:<" + b"z" * 700 + b"@example.com>\r\nNOOP\r\n")
    assert [a.is_(r) for a, r in zip(client.replies(3),
                                      (replies.OK, replies.LINE_TOO_LONG, replies.OK),
                                      strict=True)] == [True, True, True]
    # A transaction still works afterwards.
    client.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<bhayden@example.org>\r\nDATA\r\n")
    client.expect(replies.SENDER_OK)
    client.expect(replies.RECIPIENT_OK)
    client.expect(replies.START_DATA)
    client.send(b"Subject: after long lines\r\n\r\nok\r\n.\r\n")
    client.expect(replies.ACCEPTED)
    assert len(delivered(server)) == 1


def test_100k_command_line_without_newline_then_newline(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    client.send(b"NOOP " + b"A" * 100_000)
    assert client.nothing_pending(0.3), f"answered before the line ended: {client.buf!r}"
    client.send(b"\r\n")
    client.expect(replies.LINE_TOO_LONG)
    assert client.cmd("NOOP").is_(replies.OK)      # exactly one 500 for the whole line
    assert client.cmd("QUIT").is_(replies.BYE)
    assert_still_accepts_mail(server)


def test_data_line_over_998_octets_is_refused_and_nothing_delivered(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    open_transaction(client)
    client.send(b"Subject: long line\r\n\r\n" + b"a" * 999 + b"\r\nshort line\r\n.\r\n")
    client.expect(replies.DATA_LINE_TOO_LONG)
    assert delivered(server) == []
    assert server.maildir_files("bhayden", "tmp") == []
    # A huge line, sent in pieces.
    client.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<bhayden@example.org>\r\nDATA\r\n")
    client.expect(replies.SENDER_OK)
    client.expect(replies.RECIPIENT_OK)
    client.expect(replies.START_DATA)
    client.send(b"Subject: huge line\r\n\r\n")
    for _ in range(10):
        client.send(b"b" * 10_000)
    client.send(b"\r\n.\r\n")
    client.expect(replies.DATA_LINE_TOO_LONG)
    assert delivered(server) == []
    # The session is back to "ready": a 998-octet line is fine.
    client.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<bhayden@example.org>\r\nDATA\r\n")
    client.expect(replies.SENDER_OK)
    client.expect(replies.RECIPIENT_OK)
    client.expect(replies.START_DATA)
    body = b"Subject: 998\r\n\r\n" + b"c" * 998 + b"\r\n" + b"d" * 997 + b"\r\n"
    client.send(body + b".\r\n")
    client.expect(replies.ACCEPTED)
    [stored] = delivered(server)
    assert content_of(stored) == body.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------- 4. NUL bytes

def test_nul_in_a_command_is_refused_and_the_session_goes_on(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    assert client.cmd(b"NOOP\x00").is_(replies.NUL_IN_COMMAND)
    assert client.cmd(b"MAIL FROM:<sen\x00der@example.com>").is_(replies.NUL_IN_COMMAND)
    assert client.cmd(b"\x00\x00\x00").is_(replies.NUL_IN_COMMAND)
    assert client.cmd("NOOP").is_(replies.OK)
    # The NUL did not open a transaction: MAIL is still allowed.
    assert client.cmd("MAIL FROM:<sender@example.com>").is_(replies.SENDER_OK)
    assert client.cmd("QUIT").is_(replies.BYE)
    assert_still_accepts_mail(server)


def test_nul_in_message_content_is_stored_as_is(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    open_transaction(client)
    body = (b"Subject: nul\x00inside\r\n\r\n"
            b"before\x00after\r\n\x00\r\n\x00\x00\x00 three\r\nend\x00\r\n")
    client.send(body + b".\r\n")
    client.expect(replies.ACCEPTED)
    [stored] = delivered(server)
    assert content_of(stored) == body.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------- 5. garbage

def random_lines(count: int, seed: int) -> list[bytes]:
    generator = random.Random(seed)
    lines = []
    while len(lines) < count:
        line = bytes(b for b in generator.randbytes(generator.randint(1, 200))
                     if b not in (0x0a, 0x0d))
        if line.split(b" ", 1)[0].upper() not in (b"QUIT", b"GET", b"POST", b"HEAD", b"PUT",
                                                  b"CONNECT", b"OPTIONS", b"DELETE"):
            lines.append(line)
    return lines


def test_random_binary_lines_get_500_and_the_session_survives(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    lines = random_lines(8, seed=51764)
    for line in lines[:4]:                       # one at a time
        answer = client.cmd(line)
        assert answer.code == 500, f"{line!r} -> {answer}"
    client.send(b"".join(line + b"\r\n" for line in lines[4:]))    # pipelined
    for line, answer in zip(lines[4:], client.replies(4), strict=True):
        assert answer.code == 500, f"{line!r} -> {answer}"
    assert client.cmd("NOOP").is_(replies.OK)
    assert client.cmd("QUIT").is_(replies.BYE)
    assert_still_accepts_mail(server)


def test_flood_of_unknown_commands_gets_421_and_close(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    client.send(b"XYZZY\r\n" * (MAX_BAD_COMMANDS + 5))
    answers = client.replies_until_closed()
    codes = [(a.code, a.enhanced) for a in answers]
    assert codes == [(500, replies.UNKNOWN_COMMAND.enhanced)] * (MAX_BAD_COMMANDS + 1) + \
        [(replies.TOO_MANY_ERRORS.code, replies.TOO_MANY_ERRORS.enhanced)], codes
    assert answers[-1].text.endswith("Too many errors, closing connection")
    assert_still_accepts_mail(server)


def test_flood_of_syntax_errors_gets_421_and_close(servers, raw_smtp):
    """More than 20 errors of any kind (500, 501, 503) end the session, not only unknown
    commands: a client repeating a broken MAIL FROM forever is the same nuisance."""
    server = servers()
    client = raw_smtp(server)
    client.greet()
    client.send(b"MAIL FROM:<not an address>\r\n" * (MAX_BAD_COMMANDS + 5))
    answers = client.replies_until_closed(limit=MAX_BAD_COMMANDS + 10)
    codes = [a.code for a in answers]
    assert codes == [501] * (MAX_BAD_COMMANDS + 1) + [replies.TOO_MANY_ERRORS.code], codes
    assert answers[-1].is_(replies.TOO_MANY_ERRORS)


def test_mixed_errors_count_towards_the_limit(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    client.greet()
    group = b"XYZZY\r\nRCPT TO:<bhayden@example.org>\r\nEHLO\r\n"     # 500, 503, 501
    client.send(group * 10)
    answers = client.replies_until_closed(limit=40)
    codes = [a.code for a in answers]
    assert codes == [500, 503, 501] * 7 + [replies.TOO_MANY_ERRORS.code], codes


@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1", b"POST /cgi-bin/x HTTP/1.0",
                                          b"CONNECT mail.example.org:25 HTTP/1.1"])
def test_http_request_gets_221_and_close(servers, raw_smtp, request_line):
    server = servers()
    client = raw_smtp(server)
    greeting = client.reply()
    assert greeting.code == 220
    client.send(request_line + b"\r\nHost: mail.example.org\r\nUser-Agent: test\r\n\r\n")
    answers = client.replies_until_closed()
    assert len(answers) == 1, [str(a) for a in answers]
    assert answers[0].is_(replies.HTTP_REFUSED)
    assert_still_accepts_mail(server)


# ---------------------------------------------------------------- 6. client vanishes mid-DATA

DISCONNECTS = {
    "partial-message": (b"Subject: cut\r\n\r\nthe first lines of a message\r\nand a half", False),
    "right-after-354": (b"", False),
    "half-end-marker": (b"Subject: cut\r\n\r\nalmost done\r\n.\r", False),
    "reset-mid-data": (b"Subject: cut\r\n\r\nthe first lines\r\n", True),
}


@pytest.mark.parametrize("sent, reset", list(DISCONNECTS.values()), ids=list(DISCONNECTS))
def test_client_disconnect_during_data_delivers_nothing(servers, raw_smtp, sent, reset):
    server = servers()
    client = raw_smtp(server)
    open_transaction(client)
    if sent:
        client.send(sent)
        time.sleep(0.2)
    client.abort() if reset else client.close()
    assert_tmp_emptied(server)
    assert delivered(server) == []
    server.wait_for_log("event=disconnect", timeout=NOTICE_TIMEOUT)
    assert_still_accepts_mail(server)
    assert server.maildir_files("bhayden", "tmp") == []


# ---------------------------------------------------------------- 7. slow clients

def test_idle_client_is_timed_out(servers, raw_smtp):
    server = servers(limits="command_timeout = 2s\n")
    client = raw_smtp(server)
    client.greet()
    # Activity keeps the session alive past the timeout ...
    for _ in range(3):
        time.sleep(1.0)
        assert client.cmd("NOOP").is_(replies.OK)
    # ... silence does not.
    started = time.monotonic()
    answer = client.reply()
    elapsed = time.monotonic() - started
    assert answer.is_(replies.TIMEOUT), str(answer)
    assert answer.code == 421 and answer.enhanced == "4.4.2"
    assert 1.5 <= elapsed <= 5.0, elapsed
    client.assert_closed()


def test_silent_client_right_after_greeting_is_timed_out(servers, raw_smtp):
    server = servers(limits="command_timeout = 2s\n")
    client = raw_smtp(server)
    assert client.reply().code == 220
    started = time.monotonic()
    client.expect(replies.TIMEOUT)
    assert 1.5 <= time.monotonic() - started <= 5.0
    client.assert_closed()


def test_client_stalling_in_data_is_dropped_and_nothing_delivered(servers, raw_smtp):
    server = servers(limits="command_timeout = 2s\n")
    client = raw_smtp(server)
    open_transaction(client)
    client.send(b"Subject: stalled\r\n\r\nsome text\r\nand then noth")
    started = time.monotonic()
    client.expect(replies.TIMEOUT)
    assert time.monotonic() - started <= 5.0
    client.assert_closed()
    assert_tmp_emptied(server)
    assert delivered(server) == []
    assert_still_accepts_mail(server)


# ---------------------------------------------------------------- 8. connection limits

def wait_for_admission(raw_smtp, server, timeout: float = NOTICE_TIMEOUT) -> SmtpClient:
    """A new connection that gets the 220 greeting (the server notices closed ones
    asynchronously, so a 421 is retried for a while)."""
    refusals = []

    def admitted() -> SmtpClient | None:
        client = raw_smtp(server)
        first = client.reply()
        if first.code == 220:
            return client
        client.close()
        refusals.append(str(first))
        return None
    return wait_until(admitted, timeout, interval=0.1, what="a connection greeted with 220",
                      detail=lambda: f"refused with: {refusals[-1:]}")


def test_per_ip_connection_limit(servers, raw_smtp):
    server = servers(limits="max_connections_per_ip = 3\n")
    held = [raw_smtp(server) for _ in range(3)]
    for client in held:
        assert client.reply().code == 220
    for _ in range(3):                               # refusals do not use up a slot
        extra = raw_smtp(server)
        extra.expect(replies.TOO_MANY_FROM_YOU)
        extra.assert_closed()
    assert held[0].cmd("QUIT").is_(replies.BYE)
    held[0].close()
    newcomer = wait_for_admission(raw_smtp, server)
    assert newcomer.cmd("EHLO client.example").code == 250
    extra = raw_smtp(server)                          # still three: the fourth is refused
    extra.expect(replies.TOO_MANY_FROM_YOU)
    for client in held[1:]:
        assert client.cmd("NOOP").is_(replies.OK)
    # All slots come back once every client has gone.
    for client in held[1:] + [newcomer]:
        client.close()
    again = [wait_for_admission(raw_smtp, server)]
    again += [raw_smtp(server) for _ in range(2)]
    for client in again[1:]:
        assert client.reply().code == 220


def test_total_connection_limit(servers, raw_smtp):
    server = servers(limits="max_connections = 2\n")
    held = [raw_smtp(server) for _ in range(2)]
    for client in held:
        assert client.reply().code == 220
    extra = raw_smtp(server)
    extra.expect(replies.TOO_MANY_CONNECTIONS)
    extra.assert_closed()
    held[1].abort()                                  # even an abrupt close frees the slot
    newcomer = wait_for_admission(raw_smtp, server)
    assert newcomer.cmd("NOOP").is_(replies.OK)
    raw_smtp(server).expect(replies.TOO_MANY_CONNECTIONS)


# ---------------------------------------------------------------- 9. crash durability

def test_acknowledged_messages_survive_sigkill(servers):
    server = servers()
    sent: dict[str, bytes] = {}
    for _ in range(5):
        token = uuid.uuid4().hex
        message = sample_message(token)
        smtp = smtplib_client(server.port("smtp"))
        try:
            smtp.ehlo()
            smtp.mail("sender@example.com", ["BODY=8BITMIME"])
            smtp.rcpt("bhayden@example.org")
            code, _ = smtp.data(message)
            assert code == 250
            server.kill()                            # right after the 250
        finally:
            smtp.close()
        sent[token] = message
        server.start()
    stored = delivered(server)
    assert len(stored) == len(sent), f"{len(stored)} stored of {len(sent)} acknowledged"
    for token, message in sent.items():
        [found] = [m for m in stored if token.encode() in m]
        assert content_of(found) == message.replace(b"\r\n", b"\n")


def test_sigkill_during_data_leaves_no_partial_message(servers, raw_smtp):
    server = servers()
    assert_still_accepts_mail(server)
    client = raw_smtp(server)
    open_transaction(client)
    marker = uuid.uuid4().hex.encode()
    # more than the store's 64 KB write buffer, so part of it reaches tmp/ before the kill
    client.send(b"Subject: partial\r\n\r\n" + marker + b"\r\n" + b"line\r\n" * 20000)

    def written() -> bool:
        return any(marker in p.read_bytes() for p in server.maildir_files("bhayden", "tmp"))
    wait_until(written, NOTICE_TIMEOUT, what="the partial message written to tmp/")
    server.kill()
    client.close()
    server.start()
    messages = delivered(server)
    assert len(messages) == 1
    assert not any(marker in m for m in messages)
    assert_still_accepts_mail(server)
    assert not any(marker in m for m in delivered(server))


# ---------------------------------------------------------------- 10. pipelining

def test_pipelined_transaction_gets_every_reply_in_order(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    ehlo = client.greet()
    assert "PIPELINING" in ehlo.lines
    client.send(b"MAIL FROM:<sender@example.com>\r\n"
                b"RCPT TO:<bhayden@example.org>\r\n"
                b"RCPT TO:<nobody@example.org>\r\n"
                b"RCPT TO:<alice@example.org>\r\n"
                b"DATA\r\n")
    expected = (replies.SENDER_OK, replies.RECIPIENT_OK, replies.NO_SUCH_USER,
                replies.RECIPIENT_OK, replies.START_DATA)
    for reply in expected:
        client.expect(reply)
    message = b"Subject: pipelined\r\n\r\nhello\r\n"
    client.send(message + b".\r\n")
    client.expect(replies.ACCEPTED)
    client.send(b"RSET\r\nNOOP\r\nQUIT\r\n")
    client.expect(replies.RESET_OK, exact_text=True)
    client.expect(replies.OK, exact_text=True)
    client.expect(replies.BYE)
    client.assert_closed()
    for mailbox in ("bhayden", "alice"):
        [stored] = delivered(server, mailbox)
        assert content_of(stored) == message.replace(b"\r\n", b"\n")


def test_commands_pipelined_after_the_final_dot(servers, raw_smtp):
    server = servers()
    client = raw_smtp(server)
    open_transaction(client)
    first, second = b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"
    client.send(first + b".\r\nMAIL FROM:<sender@example.com>\r\n"
                b"RCPT TO:<bhayden@example.org>\r\nDATA\r\n")
    for reply in (replies.ACCEPTED, replies.SENDER_OK, replies.RECIPIENT_OK, replies.START_DATA):
        client.expect(reply)
    client.send(second + b".\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    for reply in (replies.ACCEPTED, replies.RESET_OK, replies.OK, replies.BYE):
        client.expect(reply)
    client.assert_closed()
    stored = sorted(content_of(m) for m in delivered(server))
    assert stored == sorted([first.replace(b"\r\n", b"\n"), second.replace(b"\r\n", b"\n")])


# ---------------------------------------------------------------- 11. SIGTERM

def test_sigterm_with_idle_clients_says_421_and_exits_0(servers, raw_smtp):
    server = servers(limits="shutdown_grace = 1s\n")
    just_connected = raw_smtp(server)
    assert just_connected.reply().code == 220
    after_ehlo = raw_smtp(server)
    after_ehlo.greet()
    in_transaction = raw_smtp(server)
    in_transaction.greet()
    assert in_transaction.cmd("MAIL FROM:<sender@example.com>").is_(replies.SENDER_OK)
    started = time.monotonic()
    code = server.stop()
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 8.0, f"took {elapsed:.1f}s to stop with shutdown_grace = 1s"
    for client in (just_connected, after_ehlo, in_transaction):
        client.expect(replies.SHUTTING_DOWN)
        client.assert_closed()
    with pytest.raises(OSError):
        SmtpClient(server.port("smtp"), timeout=2).close()


def test_sigterm_lets_a_message_in_progress_finish(servers, raw_smtp):
    server = servers(limits="shutdown_grace = 5s\n")
    client = raw_smtp(server)
    open_transaction(client)
    client.send(b"Subject: finishing\r\n\r\nfirst half\r\n")
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait_for_log("event=stopping")
    client.send(b"second half\r\n.\r\n")
    client.expect(replies.ACCEPTED)
    assert client.cmd("QUIT").is_(replies.BYE)
    client.assert_closed()
    assert server.process.wait(10) == 0
    assert time.monotonic() - started < 4.0, "the server waited for the whole grace period"
    [stored] = delivered(server)
    assert content_of(stored) == b"Subject: finishing\n\nfirst half\nsecond half\n"


def test_sigterm_with_a_half_sent_command_line(servers, raw_smtp):
    """A client that sent part of a command line is not idle but still gets the 421 when
    the grace period ends; the server does not hang on it."""
    server = servers(limits="shutdown_grace = 1s\n")
    client = raw_smtp(server)
    client.greet()
    client.send(b"NOO")
    time.sleep(0.2)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 8.0
    client.expect(replies.SHUTTING_DOWN)
    client.assert_closed()
