"""What the protocol engines (SMTP, POP3) take and return, shared by both:
who the client is, the Step a command produces, and the Engine interface
the socket handler (server/listeners.py) drives them through."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..checks import trust
from ..config.tls import TlsInfo
from ..log.events import EventLog
from .runtime import Runtime, Services


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

    def __init__(self, runtime: Runtime, services: Services, client: ClientInfo,
                 log: EventLog | None = None, session_id: str | None = None):
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


class Engine(Protocol):
    """A protocol engine as the socket handler sees it: fed lines (or DATA
    chunks), it answers with Steps; the handler does all the socket I/O.

    The handler reads a line of at most `max_line` octets and calls
    `feed_line`, or `line_too_long` when it was longer; while
    `receiving_data` it passes raw chunks to `feed_data` instead (and puts a
    Step's `leftover` back in front of its input). It calls `timeout` when
    the client is silent for command_timeout, `shutdown` when the daemon
    stops, `tls_started`/`tls_failed` after the handshake that a START_TLS
    action asked for, and `close` whenever the connection ends, however
    often (after the first call it does nothing).
    """

    @property
    def log(self) -> EventLog: ...
    @property
    def receiving_data(self) -> bool: ...
    @property
    def max_line(self) -> int: ...

    def greeting(self) -> Step: ...
    def feed_line(self, line: bytes) -> Step: ...
    def feed_data(self, chunk: bytes) -> Step: ...
    def line_too_long(self) -> Step: ...
    def timeout(self) -> Step: ...
    def shutdown(self) -> Step: ...
    def tls_started(self, info: TlsInfo) -> None: ...
    def tls_failed(self, reason: str) -> None: ...
    def close(self, reason: str = ...) -> None: ...


class EngineClass(Protocol):
    """An engine's class: what the handler makes one session per connection with."""
    component: str                      # the log's comp= (smtp, pop3)

    def __call__(self, runtime: Runtime, services: Services, client: ClientInfo) -> Engine: ...
