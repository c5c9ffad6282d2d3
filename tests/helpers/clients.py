"""Clients for the server under test: raw SMTP and POP3 over a socket (bytes exactly
as given, replies parsed), and smtplib/poplib shortcuts for the ordinary cases."""

from __future__ import annotations

import poplib
import re
import select
import smtplib
import socket
import ssl
import struct
from dataclasses import dataclass

from lib.core import replies
from lib.core.replies import Reply

from .ini import HOSTNAME, PASSWORD
from .net import HOST, TIMEOUT

IO_TIMEOUT = 10.0              # every read or write of a raw client
CLOSE_TIMEOUT = 3.0            # how long a raw client waits for the server to hang up
MAX_REPLY_LINES = 200          # an SMTP reply longer than this is a runaway
MAX_BUFFERED = 1 << 20         # so is this much unread input
CLIENT_NAME = "client.example.com"     # our EHLO name: no DNS look-up of our own host

_REPLY_LINE = re.compile(r"(\d{3})([ -])(.*)\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: |\Z)")


# ---------------------------------------------------------------- raw clients

class RawConnection:
    """A buffered TCP connection: bytes out as given, lines in, bounded by timeouts."""

    def __init__(self, port: int, host: str = HOST, timeout: float = IO_TIMEOUT):
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read what has arrived; False once the server has closed."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        assert len(self.buf) < MAX_BUFFERED, "the server sent far too much"
        return True

    def read_until(self, terminator: bytes) -> bytes | None:
        """The next line with its terminator; None when the server closed first
        (a partial line stays in `buf`)."""
        while terminator not in self.buf:
            if self.eof or not self._fill():
                return None
        line, _, self.buf = self.buf.partition(terminator)
        return line + terminator

    def nothing_pending(self, wait: float = 0.3) -> bool:
        """True when no byte arrives within `wait` seconds (and none is buffered)."""
        if self.buf:
            return False
        readable, _, _ = select.select([self.sock], [], [], wait)
        return not readable

    def assert_closed(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """The server closes the connection without sending anything more."""
        self.sock.settimeout(timeout)
        try:
            while not self.eof:
                assert not self.buf, f"unexpected data before close: {self.buf!r}"
                try:
                    self._fill()
                except TimeoutError:
                    raise AssertionError(f"connection still open after {timeout}s") from None
            assert not self.buf, f"unexpected data before close: {self.buf!r}"
        finally:
            self.sock.settimeout(self.timeout)

    def starttls(self, context: ssl.SSLContext, hostname: str = HOSTNAME) -> None:
        """The TLS handshake, once the server said go ahead (STARTTLS, STLS)."""
        assert not self.buf, f"cleartext bytes received before the TLS handshake: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self.sock.settimeout(self.timeout)

    def abort(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Answer:
    """One SMTP reply as received (possibly multi-line)."""
    code: int
    lines: list[str]

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.lines[0])
        return match.group(1) if match else None

    @property
    def text(self) -> str:
        """The text of every line without the enhanced code, joined by newlines."""
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return "\n".join(line[len(prefix):] if line.startswith(prefix) else line
                         for line in self.lines)

    def is_(self, reply: Reply) -> bool:
        return self.code == reply.code and self.enhanced == reply.enhanced

    def assert_is(self, reply: Reply, *, exact_text: bool = False) -> Answer:
        """Code and enhanced code are `reply`'s (and, with exact_text, its text)."""
        assert self.is_(reply), f"expected {reply}, got {self}"
        if exact_text:
            assert self.text == reply.text, f"expected {reply}, got {self}"
        return self

    def __str__(self) -> str:
        return " / ".join(f"{self.code} {line}" for line in self.lines)


class SmtpClient(RawConnection):
    """A raw SMTP connection: command lines out as given (str as UTF-8), replies parsed
    and checked for form (CRLF, one code throughout a multi-line reply)."""

    def reply(self) -> Answer:
        lines: list[str] = []
        first_code = None
        for _ in range(MAX_REPLY_LINES):
            raw = self.read_until(b"\n")
            if raw is None:
                raise AssertionError(f"connection closed while waiting for a reply "
                                     f"(partial reply: {lines}, unparsed: {self.buf!r})")
            assert raw.endswith(b"\r\n"), f"reply line not ended by CRLF: {raw!r}"
            match = _REPLY_LINE.match(raw[:-2].decode("utf-8", "replace"))
            assert match, f"not an SMTP reply line: {raw!r}"
            code, more, text = int(match.group(1)), match.group(2) == "-", match.group(3)
            assert first_code in (None, code), f"code changed inside a multi-line reply: {raw!r}"
            first_code = code
            lines.append(text)
            if not more:
                return Answer(code, lines)
        raise AssertionError(f"reply of more than {MAX_REPLY_LINES} lines")

    def replies(self, count: int) -> list[Answer]:
        return [self.reply() for _ in range(count)]

    def expect(self, reply: Reply, *, exact_text: bool = False) -> Answer:
        return self.reply().assert_is(reply, exact_text=exact_text)

    def cmd(self, line: str | bytes) -> Answer:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def greet(self, ehlo: str = "client.example") -> Answer:
        """Read the 220 greeting and say EHLO; the EHLO answer."""
        greeting = self.reply()
        assert greeting.code == replies.GREETING.code, f"greeting: {greeting}"
        answer = self.cmd(f"EHLO {ehlo}")
        assert answer.code == 250 and len(answer.lines) > 1, f"EHLO: {answer}"
        return answer

    def replies_until_closed(self, limit: int = 100,
                             timeout: float = CLOSE_TIMEOUT) -> list[Answer]:
        """Every reply until the server closes the connection (bounded in count and
        in time: `timeout` seconds of silence without a close is a failure)."""
        found: list[Answer] = []
        self.sock.settimeout(timeout)
        try:
            for _ in range(limit):
                if not self.buf:
                    try:
                        if not self._fill():
                            return found
                    except TimeoutError:
                        raise AssertionError(
                            f"server did not close the connection within {timeout}s; "
                            f"replies so far: {[str(a) for a in found]}") from None
                found.append(self.reply())
        finally:
            self.sock.settimeout(self.timeout)
        raise AssertionError(f"more than {limit} replies: {[str(a) for a in found]}")


class Pop3Client(RawConnection):
    """A raw POP3 connection: command lines out as given, lines in without CRLF."""

    def __init__(self, port: int, host: str = HOST, timeout: float = TIMEOUT):
        super().__init__(port, host, timeout)

    def greeting(self) -> bytes:
        line = self.line()
        assert line is not None and line.startswith(b"+OK"), f"greeting: {line!r}"
        return line

    def line(self) -> bytes | None:
        """The next line without CRLF; None once the server has closed (what it sent
        before closing without a CRLF comes first, as a line of its own)."""
        line = self.read_until(b"\r\n")
        if line is not None:
            return line[:-2]
        rest, self.buf = self.buf, b""
        return rest or None

    def ask(self, command: bytes) -> bytes | None:
        """Send one command line; the first line of its answer."""
        self.send(command + b"\r\n")
        return self.line()

    def multi(self) -> list[bytes]:
        """The lines of a multi-line answer up to the terminating '.' (still
        byte-stuffed, as on the wire)."""
        lines: list[bytes] = []
        while (line := self.line()) != b".":
            assert line is not None, f"connection closed inside a multi-line answer: {lines}"
            lines.append(line)
        return lines


# ---------------------------------------------------------------- smtplib and poplib

def smtplib_client(port: int, host: str = HOST,
                   context: ssl.SSLContext | None = None) -> smtplib.SMTP:
    """smtplib connected to `port` with our EHLO name and timeout; with `context`,
    TLS from the first byte (SMTP_SSL)."""
    if context is not None:
        return smtplib.SMTP_SSL(host, port, local_hostname=CLIENT_NAME, timeout=TIMEOUT,
                                context=context)
    return smtplib.SMTP(host, port, local_hostname=CLIENT_NAME, timeout=TIMEOUT)


def submit(port: int, sender: str, recipients: list[str], message: bytes | str, *,
           host: str = HOST, mail_options: tuple[str, ...] = ()) -> str:
    """One message over SMTP, every step answered 250; the id from `queued as ID`."""
    if isinstance(message, str):
        message = message.encode()
    with smtplib_client(port, host) as client:
        client.ehlo()
        if "SMTPUTF8" in mail_options:
            client.command_encoding = "utf-8"
        code, text = client.mail(sender, list(mail_options))
        assert code == 250, (sender, code, text)
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, (recipient, code, text)
        code, text = client.data(message)
        assert code == 250, (code, text)
    match = re.search(rb"queued as (\S+)", text)
    assert match, text
    return match.group(1).decode()


def pop3_client(port: int, host: str = HOST,
                context: ssl.SSLContext | None = None) -> poplib.POP3:
    """poplib connected to `port`; with `context`, TLS from the first byte (POP3_SSL)."""
    if context is not None:
        return poplib.POP3_SSL(host, port, context=context, timeout=TIMEOUT)
    return poplib.POP3(host, port, timeout=TIMEOUT)


def pop3_login(port: int, user: str = "alice", password: str = PASSWORD, host: str = HOST,
               context: ssl.SSLContext | None = None) -> poplib.POP3:
    """poplib logged in with USER/PASS (fails unless the server says +OK)."""
    client = pop3_client(port, host, context)
    client.user(user)
    reply = client.pass_(password)
    assert reply.startswith(b"+OK"), reply
    return client
