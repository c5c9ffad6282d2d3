"""What the protocol engines (SMTP, POP3) take and return, shared by both:
who the client is, and the Step a command produces."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ..checks import trust
from ..config.tls import TlsInfo
from ..log.events import EventLog


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
    """What the SMTP and POP3 engines share: who the client is, the config the
    session started with, its id and log, and the TLS and password rules."""

    component = "session"          # the log's comp=, set by each engine

    def __init__(self, runtime, services, client: ClientInfo, log: EventLog | None = None,
                 session_id: str | None = None):
        self.runtime = runtime           # kept for the whole session, whatever a reload does
        self.config = runtime.config
        self.router = runtime.router
        self.services = services
        self.client = client
        self.tls: TlsInfo | None = client.tls
        self.id = session_id or secrets.token_hex(4)
        self.log = (log or EventLog(self.component)).bind(session=self.id)

    @property
    def tls_offered(self) -> bool:
        """STARTTLS / STLS is possible: TLS is configured and not yet in use."""
        return self.runtime.tls is not None and self.tls is None

    @property
    def auth_allowed(self) -> bool:
        """May a password be sent on this connection now ([tls] plaintext_auth)?"""
        return trust.plaintext_auth_allowed(self.config, self.client.ip, self.tls is not None)

    def _say(self, step: Step) -> Step:
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
