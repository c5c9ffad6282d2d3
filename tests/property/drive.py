"""Drives a protocol engine over a byte stream as the socket handler does, with
no socket: the stream arrives in pieces of chosen sizes through the real
LineReader, and every exception the engine logs makes the test fail.

The engines' catch-alls turn a bug into a 451 / -ERR [SYS/TEMP] so the server
stays up; they log it with `EventLog.exception`. A session driven here logs
to a private logger whose handler records those lines, and `converse` fails
on the first one, with its traceback.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass, replace

from lib.checks.logins import Authenticator, AuthThrottle
from lib.config.tls import TlsInfo
from lib.log.events import EventLog, LineFormatter
from lib.server.linereader import LineReader, LineTooLong
from lib.session.engine import Action, Engine
from lib.session.runtime import Runtime, Services

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
ENDINGS = ("eof", "timeout", "shutdown")      # how a conversation ends when input runs out


def cheap_hash(password: str) -> str:
    """A valid hash line that costs microseconds (ln=1): the fuzz logs in thousands
    of times, and the real cost (25 ms) would only slow it down."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    salt_text, key_text = (base64.b64encode(part).decode().rstrip("=") for part in (salt, key))
    return f"$scrypt$ln=1,r=1,p=1${salt_text}${key_text}"


class ExceptionWatcher(logging.Handler):
    """Keeps every log line that carries a traceback: an engine's catch-all fired."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(LineFormatter(with_time=False))
        self.caught: list[str] = []
        # A logger of its own, outside the logging tree: nothing global changes,
        # and DEBUG makes the engines run their transcript code too.
        self.logger = logging.Logger("engine-under-test", logging.DEBUG)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.caught.append(self.format(record))

    def log(self, component: str) -> EventLog:
        return EventLog(component, logger=self.logger)


@dataclass(frozen=True)
class Setup:
    """What a fuzz module's conversations share; short in hypothesis' reports."""
    runtime: Runtime
    services: Services
    mailbox: object = None          # POP3: the Maildir put back before each conversation

    def __repr__(self) -> str:
        return f"Setup({self.runtime.config.path.name})"


def fresh_services(services: Services) -> Services:
    """The same store and queue with a login throttle of its own, so one
    conversation's failed logins do not lock the next one out."""
    return replace(services, auth=Authenticator(AuthThrottle(), services.auth.cache))


class PieceSocket:
    """recv_into hands out `data` in pieces of the given sizes, cycling through them."""

    def __init__(self, data: bytes, sizes: list[int]):
        self._data = memoryview(data)
        self._sizes = [max(1, size) for size in sizes] or [len(data) or 1]
        self._turn = 0

    def recv_into(self, buffer) -> int:
        size = min(self._sizes[self._turn % len(self._sizes)], len(buffer), len(self._data))
        self._turn += 1
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size


def converse(session: Engine, watcher: ExceptionWatcher, data: bytes, sizes: list[int],
             ending: str = "eof") -> list[bytes]:
    """Everything the engine sends for `data`: its replies and bodies, in order.

    As the listener does: read a bounded line or, inside DATA, a chunk; feed
    it; put a Step's leftover back in front of the input; perform the action.
    A START_TLS is taken as a handshake that worked, and what the client
    pipelined after the command is kept (dropping it is the listener's job).
    When the input runs out the connection ends as `ending` says.
    """
    reader = LineReader(PieceSocket(data, sizes))
    sent: list[bytes] = []
    step = session.greeting()
    try:
        while True:
            sent += [reply.to_bytes() for reply in step.replies]
            if step.body is not None:
                sent.append(b"".join(step.body))
            if step.leftover:
                reader.unread(step.leftover)
            if step.action is Action.CLOSE:
                break
            if step.action is Action.START_TLS:
                session.tls_started(TLS)
            next_step = _next_step(reader, session, ending)
            if next_step is None:
                break
            step = next_step
    finally:
        session.close()
    assert not watcher.caught, "the engine logged an exception:\n" + "\n".join(watcher.caught)
    return sent


def _next_step(reader: LineReader, session: Engine, ending: str):
    if session.receiving_data:
        chunk = reader.read_chunk()
        if chunk:
            return session.feed_data(chunk)
    else:
        try:
            line = reader.readline(session.max_line)
        except LineTooLong:
            return session.line_too_long()
        if line:
            return session.feed_line(line)
    if ending == "timeout":
        return session.timeout()
    if ending == "shutdown":
        return session.shutdown()
    session.close("client disconnected")
    return None
