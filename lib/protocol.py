"""What the protocol engines (SMTP, POP3) take and return, shared by both:
who the client is, and the Step a command produces."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, NamedTuple

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


class Step(NamedTuple):
    replies: list                 # Reply or PopReply objects, written in order
    action: Action = Action.NONE
    leftover: bytes = b""         # SMTP: bytes after the end of DATA (the next commands)
    body: Iterable[bytes] | None = None   # POP3: message octets streamed after the replies
