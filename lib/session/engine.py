"""What the protocol engines (SMTP, POP3) take and return, shared by both:
who the client is, the Step a command produces, the Engine interface the
socket handler (server/listeners.py) drives them through, and the error
budget and refusal log every session keeps."""

from __future__ import annotations

import enum
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..checks import trust
from ..config.tls import TlsInfo
from ..core.errors import Reject
from ..core.replies import Reply
from ..log.events import EventLog
from .runtime import Runtime, Services

# The error budget, as Postfix keeps it (smtpd_*_error_limit, smtpd_recipient_overshoot_limit).
HARD_ERROR_LIMIT = 20     # more errors than this: the session is closed
SOFT_ERROR_LIMIT = 10     # more than this: SMTP delays replies to strangers ([limits] error_sleep)
OVERSHOOT_LIMIT = 1000    # refusals that are no error by themselves (452 past max_recipients,
                          # 530, 552, 454 ...) count as errors past this many in a session
JUNK_COMMAND_LIMIT = 100  # commands that do nothing (NOOP, RSET ...) count as errors past
                          # this many without a message; past 1 under stress (Postfix's)
LOGGED_REFUSALS = 5       # one refusal is logged this often per session, then only counted


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
    # Does feed_line's `more_input` matter (SMTP's RFC 2920 check)? Only then does
    # the handler ask the socket, one system call per command.
    watches_pipelining = False

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
        self.budget = ErrorBudget()
        self.refusal_log = RefusalLog(self.log)

    @property
    def tls_offered(self) -> bool:
        """STARTTLS / STLS is possible: TLS is configured and not yet in use."""
        return self.runtime.tls is not None and self.tls is None

    @property
    def auth_allowed(self) -> bool:
        """May a password be sent on this connection now ([tls] plaintext_auth)?"""
        return trust.plaintext_auth_allowed(self.config, self.client.ip, self.tls is not None)

    def _refuse(self, reply, event: str, *, level: str = "info", **fields) -> Reject:
        """A refusal's log line (the first few times in a session) and the Reject to raise."""
        self.refusal_log.note(reply, event, level, **fields)
        return Reject(reply)

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
    delay: float = 0.0            # seconds to wait before writing the replies (a tarpit)


class ErrorBudget:
    """How many errors a session has made, and what follows from it: past
    SOFT_ERROR_LIMIT SMTP slows a stranger down, past HARD_ERROR_LIMIT the
    session is closed. Refusals that are no error by themselves count only
    past OVERSHOOT_LIMIT, so that no answer can be had forever for free."""

    def __init__(self):
        self.errors = 0
        self.refusals = 0         # refusals that did not count (yet)
        self.junk = 0             # commands that do nothing

    def junk_command(self, stressed: bool) -> bool:
        """Count a command that does nothing (Postfix's smtpd_junk_command_limit):
        a client must not hold its connection forever with NOOPs that each come
        just in time. True when the budget is spent."""
        self.junk += 1
        return self.junk > (1 if stressed else JUNK_COMMAND_LIMIT) and self.error()

    def error(self) -> bool:
        """Count a client error; True when the budget is spent."""
        self.errors += 1
        return self.errors > HARD_ERROR_LIMIT

    def refusal(self) -> bool:
        """Count a refusal that is no error by itself; True when the budget is spent."""
        self.refusals += 1
        return self.refusals > OVERSHOOT_LIMIT and self.error()

    @property
    def past_soft_limit(self) -> bool:
        return self.errors > SOFT_ERROR_LIMIT

    def forgive(self) -> None:
        """A message was accepted: earlier errors are forgiven, as Postfix does."""
        self.errors = self.refusals = self.junk = 0


class RefusalLog:
    """Refusal log lines, the first LOGGED_REFUSALS of each kind per session;
    the rest are counted and summed up in one `refused_repeatedly` line when
    the session ends, so a client repeating one refused command 100,000
    times cannot fill the disk with the same line."""

    def __init__(self, log: EventLog):
        self._log = log
        self._counts: Counter[tuple[str, str]] = Counter()

    def note(self, reply, event: str, level: str = "info", **fields) -> None:
        key = (event, _reply_label(reply))
        self._counts[key] += 1
        if self._counts[key] <= LOGGED_REFUSALS:
            getattr(self._log, level)(event, **fields)

    def summarise(self) -> None:
        """One line for each refusal that was not logged every time (at the end of a session)."""
        for (event, label), count in self._counts.items():
            if count > LOGGED_REFUSALS:
                self._log.warning("refused_repeatedly", refusal=event, reply=label, count=count,
                                  logged=LOGGED_REFUSALS)
        self._counts.clear()


def _reply_label(reply) -> str:
    """452 for an SMTP reply, -ERR (or -ERR [AUTH]) for a POP3 one."""
    if isinstance(reply, Reply):
        return str(reply.code)
    return "-ERR" + (f" [{reply.code}]" if getattr(reply, "code", None) else "")


class Engine(Protocol):
    """A protocol engine as the socket handler sees it: fed lines (or DATA
    chunks), it answers with Steps; the handler does all the socket I/O.

    Before the greeting the handler listens for `greet_pause` seconds and
    passes `greeting` whatever the client sent meanwhile (a client that
    talks first is refused). It reads a line of at most `max_line` octets
    and calls `feed_line`, telling it whether more input was already waiting
    (RFC 2920 allows that only after some commands; asked only of an engine
    that `watches_pipelining`), or `line_too_long` when
    the line was longer; while `receiving_data` it passes raw chunks to
    `feed_data` instead (and puts a Step's `leftover` back in front of its
    input). It waits a Step's `delay` before writing its replies. It calls
    `timeout` when the client misses a deadline (command_timeout), `shutdown`
    when the daemon stops (at once while the session is `idle`, after
    shutdown_grace otherwise), `tls_started`/`tls_failed` after the
    handshake that a START_TLS action asked for, and `close` whenever the
    connection ends, however often (after the first call it does nothing).
    """

    @property
    def log(self) -> EventLog: ...
    @property
    def receiving_data(self) -> bool: ...
    @property
    def max_line(self) -> int: ...
    @property
    def idle(self) -> bool:
        """Between commands, with nothing in flight (no transaction, not in DATA,
        not inside an AUTH exchange): a shutdown may end the session at once."""
        ...
    @property
    def greet_pause(self) -> float:
        """How long the handler listens before the greeting (0: it greets at once)."""
        ...
    @property
    def watches_pipelining(self) -> bool:
        """Does `feed_line` use `more_input`? (Otherwise the handler passes False.)"""
        ...

    def greeting(self, early: bytes = b"") -> Step: ...
    def feed_line(self, line: bytes, more_input: bool = False) -> Step: ...
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
