"""The SASL exchange of one SMTP AUTH command (RFC 4954): PLAIN (RFC 4616)
and LOGIN, decoded from the client's lines with no I/O and no password check."""

from __future__ import annotations

from typing import NamedTuple

from ..core import passwords

MECHANISMS = ("PLAIN", "LOGIN")
LOGIN_USERNAME = "VXNlcm5hbWU6"    # base64 "Username:"
LOGIN_PASSWORD = "UGFzc3dvcmQ6"    # base64 "Password:"


class Cancelled(Exception):
    """The client answered a challenge with "*" (RFC 4954 4)."""


class Credentials(NamedTuple):
    name: str
    secret: str


class SaslExchange:
    """What one AUTH exchange has received so far, and what to ask next."""

    def __init__(self, mechanism: str):
        self.mechanism = mechanism          # one of MECHANISMS
        self._login_name: str | None = None

    def first_challenge(self) -> str:
        """The 334 text when AUTH came without an initial response."""
        return "" if self.mechanism == "PLAIN" else LOGIN_USERNAME

    def respond(self, line: str) -> str | Credentials:
        """A response line -> the next challenge, or the credentials once complete.
        Raises Cancelled for "*", passwords.SaslError for what cannot be decoded."""
        if line.strip() == "*":
            raise Cancelled()
        data = passwords.b64decode_response(line)
        if self.mechanism == "PLAIN":
            return Credentials(*passwords.decode_plain(data))
        if self._login_name is None:
            self._login_name = passwords.decode_text(data)
            return LOGIN_PASSWORD
        return Credentials(self._login_name, passwords.decode_text(data))
