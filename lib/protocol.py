"""What the protocol engines (SMTP, POP3) take and return, shared by both:
who the client is, and the Step a command produces."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from . import policy
from .tls import TlsInfo


@dataclass(frozen=True)
class ClientInfo:
    ip: str
    port: int
    listener: str                 # the [listen] key: smtp, submission, ..., pop3s
    tls: TlsInfo | None = None    # set when the connection started inside TLS


class Action(enum.Enum):
    NONE = "none"
    START_TLS = "start_tls"       # write the replies, then do the TLS handshake
    CLOSE = "close"               # write the replies, then close


class SessionBasics:
    """What the SMTP and POP3 engines share. A subclass sets runtime, config,
    client, tls (TlsInfo or None) and log."""

    @property
    def tls_offered(self) -> bool:
        """STARTTLS / STLS is possible: TLS is configured and not yet in use."""
        return self.runtime.tls is not None and self.tls is None

    @property
    def auth_allowed(self) -> bool:
        """May a password be sent on this connection now ([tls] plaintext_auth)?"""
        return policy.plaintext_auth_allowed(self.config, self.client.ip, self.tls is not None)

    def _say(self, step: "Step") -> "Step":
        """Pass a step back, with its replies in the debug transcript."""
        if self.log.debugging:
            for reply in step.replies:
                self.log.debug("send", reply=str(reply)[:200])
        return step


class Step(NamedTuple):
    replies: list                 # Reply or PopReply objects, written in order
    action: Action = Action.NONE
    leftover: bytes = b""         # SMTP: bytes after the end of DATA (the next commands)
    body: Iterable[bytes] | None = None   # POP3: message octets streamed after the replies
