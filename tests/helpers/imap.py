"""IMAP clients for the server tests: imaplib logged in, and a raw line client
for what imaplib cannot do (IDLE, pipelined STARTTLS, slow bytes)."""

from __future__ import annotations

import imaplib
import re
import ssl

from .clients import RawConnection
from .ini import PASSWORD
from .net import HOST, TIMEOUT

RESPONSE_CODE = re.compile(rb"\[([A-Z]+) ([^\]]*)\]")


def imap_client(port: int, context: ssl.SSLContext | None = None) -> imaplib.IMAP4:
    """imaplib connected to `port`; with `context`, TLS from the first byte (imaps)."""
    if context is not None:
        return imaplib.IMAP4_SSL(HOST, port, ssl_context=context, timeout=TIMEOUT)
    return imaplib.IMAP4(HOST, port, timeout=TIMEOUT)


def imap_login(port: int, user: str = "alice", context: ssl.SSLContext | None = None,
               password: str = PASSWORD) -> imaplib.IMAP4:
    """imaplib logged in (fails unless the server said OK)."""
    client = imap_client(port, context)
    status, data = client.login(user, password)
    assert status == "OK", data
    return client


def ok(answer: tuple[str, list]) -> list:
    """The data of an imaplib answer that must be OK."""
    status, data = answer
    assert status == "OK", (status, data)
    return data


def response_code(text: bytes, name: bytes) -> list[bytes]:
    """The arguments of the response code `name` ([COPYUID 5 1:2 3:4]) in `text`."""
    for found, arguments in RESPONSE_CODE.findall(text):
        if found == name:
            return arguments.split()
    raise AssertionError(f"no [{name.decode()} ...] in {text!r}")


class RawImap(RawConnection):
    """IMAP line by line: commands out as given, lines in."""

    def __init__(self, port: int, timeout: float = TIMEOUT):
        super().__init__(port, timeout=timeout)

    def line(self) -> bytes | None:
        """The next line with CRLF; None when the server closed first."""
        return self.read_until(b"\r\n")

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the tagged completion of `tag`."""
        lines = []
        while True:
            line = self.line()
            assert line is not None, f"closed before {tag!r} completed: {lines!r}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user: str = "alice") -> None:
        greeting = self.line()
        assert greeting is not None and greeting.startswith(b"* OK"), greeting
        answer = self.command(b"l", f'LOGIN {user} "{PASSWORD}"'.encode())
        assert answer[-1].startswith(b"l OK"), answer
