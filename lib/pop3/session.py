"""The POP3 engine (RFC 1939, CAPA 2449, STLS 2595, AUTH PLAIN 5034, response
codes 3206): a state machine over a snapshot of one Maildir.

At login the mailbox is locked and listed once; message numbers and sizes
stay fixed for the session, and mail arriving meanwhile shows up at the next
login. DELE only marks: messages are removed in the UPDATE state after QUIT,
so a dropped connection, a timeout or a shutdown deletes nothing. Retrieved
messages move to cur/ with the Seen flag at QUIT, for a later IMAP server.
Message bodies are not returned whole: a Step carries an iterator that reads
and encodes the file in chunks.

No sockets inside, but not free of I/O: through the MaildirStore a login
takes the mailbox's lock (a flock on a file in the Maildir) and lists the
Maildir, after waiting for a password-check slot and ~25 ms of scrypt;
RETR and TOP open and read message files (lazily, in the Step's body
iterator); QUIT renames and unlinks files and fsyncs the Maildir; close
releases the lock. Its events go to the EventLog it is given.

Refusals are raised as Reject and answered in one place (`_feed_line`);
the syntax and sequence errors in COUNTED count towards the error budget
(session.engine.ErrorBudget), other refusals only past its overshoot limit.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..config.tls import TlsInfo
from ..core import passwords, replies, wire
from ..core.errors import Reject
from ..core.replies import PopContinue, PopReply
from ..log.events import EventLog
from ..session.engine import HARD_ERROR_LIMIT, Action, ClientInfo, SessionBasics, Step
from ..session.runtime import Runtime, Services
from ..store.maildir import MailboxBusy, MailboxLock, StoredMessage

MAX_BAD_COMMANDS = HARD_ERROR_LIMIT    # then -ERR and close, as SMTP does
# refusals that count towards it: syntax and sequence errors
COUNTED = frozenset({replies.POP_UNKNOWN_COMMAND, replies.POP_WRONG_STATE,
                     replies.POP_NUL_IN_COMMAND, replies.POP_USER_NEEDS_NAME,
                     replies.POP_USER_FIRST, replies.POP_LINE_TOO_LONG})
RETR_CHUNK = 256 * 1024      # bigger messages are read and sent in pieces of this
IMPLEMENTATION = "mailbox_appliance"


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    AUTH = "auth"                 # inside a SASL exchange (RFC 5034)
    TRANSACTION = "transaction"
    CLOSED = "closed"


@dataclass(frozen=True)
class Command:
    allowed: frozenset
    run: Callable


class Pop3Session(SessionBasics):
    component = "pop3"

    def __init__(self, runtime: Runtime, services: Services, client: ClientInfo,
                 log: EventLog | None = None, session_id: str | None = None):
        super().__init__(runtime, services, client, log, session_id)
        self.store = services.store
        self.state = State.AUTHORIZATION
        self.user_name: str | None = None          # from USER, until PASS
        self.mailbox: str | None = None
        self.messages: list[StoredMessage] = []
        self.deleted: set[int] = set()             # 0-based indexes
        self.retrieved: set[int] = set()
        self._lock: MailboxLock | None = None

    # ------------------------------------------------------------ what the handler asks

    receiving_data = False        # POP3 has no DATA phase; the handler asks SMTP and POP3 alike

    def feed_data(self, chunk: bytes) -> Step:
        raise RuntimeError("POP3 has no DATA phase; use feed_line")

    greet_pause = 0.0             # POP3 clients may talk first (RFC 2449 PIPELINING)

    @property
    def max_line(self) -> int:
        return wire.MAX_SASL_LINE if self.state is State.AUTH else wire.MAX_POP3_LINE

    @property
    def idle(self) -> bool:
        """Between commands and not inside AUTH: marked deletions are only marks."""
        return self.state is not State.AUTH

    # ------------------------------------------------------------ events

    def greeting(self, early: bytes = b"") -> Step:
        self.log.info("connect", client=f"{self.client.ip}:{self.client.port}",
                      listener=self.client.listener, tls=self.tls.version if self.tls else None)
        return self._say(Step([replies.POP_GREETING]))

    def tls_started(self, info: TlsInfo) -> None:
        self.tls = info
        self.user_name = None
        self.state = State.AUTHORIZATION
        self.log.info("stls", version=info.version, cipher=info.cipher)

    def tls_failed(self, reason: str) -> None:
        self.log.warning("tls_failed", reason=reason)
        self.close("tls handshake failed")

    def timeout(self) -> Step:
        self.close("timeout")
        return self._say(Step([replies.POP_TIMEOUT], Action.CLOSE))

    def shutdown(self) -> Step:
        self.close("server shutting down")
        return self._say(Step([replies.POP_SHUTTING_DOWN], Action.CLOSE))

    def line_too_long(self) -> Step:
        self._end_auth()
        return self._error(replies.POP_LINE_TOO_LONG)

    def close(self, reason: str = "client closed") -> None:
        """The connection is gone: release the mailbox, delete nothing."""
        if self.state is State.CLOSED:
            return
        self._end_auth()
        self.refusal_log.summarise()
        if self.mailbox is not None and reason != "quit":
            self.log.info("disconnect", reason=reason, user=self.mailbox,
                          retrieved=len(self.retrieved), kept_marked=len(self.deleted) or None)
        elif reason != "quit":
            self.log.info("disconnect", reason=reason)
        self._release()
        self.state = State.CLOSED

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------ input

    def feed_line(self, line: bytes, more_input: bool = False) -> Step:
        """One command line; POP3 allows pipelining, so `more_input` changes nothing."""
        try:
            return self._feed_line(line)
        except Exception:                    # a bug: answer, keep the session usable
            self.log.exception("internal_error", state=self.state.value, user=self.mailbox)
            self._end_auth()
            # counted: a client that can trigger a bug must not do it forever
            return self._error(replies.POP_SYS_TEMP)

    def _feed_line(self, line: bytes) -> Step:
        if self.state is State.CLOSED:
            return Step([])
        text = line.rstrip(b"\n").rstrip(b"\r")
        if self.log.debugging:
            self.log.debug("recv", line=self._masked(text))
        try:
            if b"\0" in text:
                raise Reject(replies.POP_NUL_IN_COMMAND)
            decoded = text.decode("utf-8", "surrogateescape")
            if self.state is State.AUTH:
                return self._say(self._sasl_response(decoded))
            verb, _, argument = decoded.partition(" ")
            command = COMMANDS.get(verb.upper())
            if command is None:
                raise Reject(replies.POP_UNKNOWN_COMMAND)
            if self.state not in command.allowed:
                raise Reject(replies.POP_WRONG_STATE)
            return self._say(command.run(self, argument))
        except Reject as reject:                 # the one place a refusal becomes a reply
            if reject.reply in COUNTED:
                return self._error(reject.reply)
            return self._answer_refusal(reject.reply)
        except OSError as error:                 # the disk failed (read-only, full, gone):
            # a known kind of trouble, said in one line; no traceback for the admin
            self.log.error("pop3_error", user=self.mailbox, error=str(error))
            return self._answer_refusal(replies.POP_SYS_TEMP)

    def _error(self, reply: PopReply) -> Step:
        """A syntax or sequence error: counted, and after too many the connection closes."""
        if self.budget.error():
            return self._too_many_errors(reply)
        return self._say(Step([reply]))

    def _answer_refusal(self, reply: PopReply) -> Step:
        """Any other -ERR: it counts only past the overshoot limit."""
        if self.budget.refusal():
            return self._too_many_errors(reply)
        return self._say(Step([reply]))

    def _too_many_errors(self, reply: PopReply) -> Step:
        self.log.warning("too_many_errors", count=self.budget.errors,
                         refusals=self.budget.refusals or None)
        self.close("too many errors")
        return self._say(Step([reply, replies.POP_TOO_MANY_ERRORS], Action.CLOSE))

    def _masked(self, text: bytes) -> str:
        """The line for the debug log, with passwords and SASL data replaced by ****."""
        if self.state is State.AUTH:
            return "****"
        words = text.decode("utf-8", "replace").split()
        verb = words[0].upper() if words else ""
        if verb == "PASS":
            return "PASS ****"
        if verb == "AUTH":
            return " ".join(words[:2]) + (" ****" if len(words) > 2 else "")
        return text.decode("utf-8", "replace")

    # ------------------------------------------------------------ AUTHORIZATION

    def _capa(self, argument: str) -> Step:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION and self.auth_allowed:
            caps += ["USER", "SASL PLAIN"]
        if self.state is State.AUTHORIZATION and self.tls_offered:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return Step([replies.POP_CAPA], body=_lines(caps))

    def _stls(self, argument: str) -> Step:
        if self.tls is not None:
            raise Reject(replies.POP_TLS_ACTIVE)
        if self.runtime.tls is None:
            raise Reject(replies.POP_TLS_UNAVAILABLE)
        return Step([replies.POP_TLS_BEGIN], Action.START_TLS)

    def _user(self, argument: str) -> Step:
        if not self.auth_allowed:
            raise Reject(replies.POP_PLAINTEXT_REFUSED)
        name = argument.strip()
        if not name:
            raise Reject(replies.POP_USER_NEEDS_NAME)
        self.user_name = name
        return Step([replies.POP_SEND_PASSWORD])

    def _pass(self, argument: str) -> Step:
        if not self.auth_allowed:
            raise Reject(replies.POP_PLAINTEXT_REFUSED)
        if self.user_name is None:
            raise Reject(replies.POP_USER_FIRST)
        name, self.user_name = self.user_name, None
        return self._login("USER", name, argument)     # a password may contain spaces

    def _auth(self, argument: str) -> Step:
        mechanism, _, initial = argument.strip().partition(" ")
        if not mechanism:          # the RFC 1734 form some clients use to list mechanisms
            return Step([replies.POP_SASL_METHODS], body=_lines(["PLAIN"]))
        if mechanism.upper() != "PLAIN":
            raise Reject(replies.POP_UNKNOWN_MECHANISM)
        if not self.auth_allowed:
            raise Reject(replies.POP_PLAINTEXT_REFUSED)
        if initial.strip():
            return self._sasl_response(initial)
        self.state = State.AUTH
        return Step([PopContinue()])

    def _sasl_response(self, text: str) -> Step:
        """The PLAIN response, as the AUTH argument or on its own line: the exchange ends."""
        self._end_auth()
        if text.strip() == "*":
            raise Reject(replies.POP_AUTH_CANCELLED)
        try:
            name, secret = passwords.decode_plain(passwords.b64decode_response(text))
        except passwords.SaslError as error:
            self.budget.errors += 1           # counted, though never the one that closes
            raise Reject(replies.POP_BAD_CREDENTIALS.fill(detail=str(error))) from None
        return self._login("PLAIN", name, secret)

    def _end_auth(self) -> None:
        """The one way out of the SASL exchange, whatever ended it."""
        if self.state is State.AUTH:
            self.state = State.AUTHORIZATION

    def _login(self, method: str, name: str, secret: str) -> Step:
        result = self.services.auth.login(self.router, self.client.ip, name, secret)
        if result.mailbox is None:
            raise self._refuse(replies.POP_AUTH_LOCKED if result.locked else
                                replies.POP_AUTH_FAILED, "login_failed", level="warning",
                                method=method, user=name[:64], reason=result.reason,
                                client=self.client.ip)
        try:
            self._lock = self.store.lock(result.mailbox)
        except MailboxBusy:
            self.log.info("login_refused", user=result.mailbox, reason="mailbox in use")
            raise Reject(replies.POP_IN_USE) from None
        try:
            self.messages = self.store.snapshot(result.mailbox)
        except OSError as error:
            self._release()
            self.log.error("login_failed", user=result.mailbox, reason=f"cannot list: {error}")
            raise Reject(replies.POP_SYS_TEMP) from None
        self.mailbox = result.mailbox
        self.state = State.TRANSACTION
        count, size = self._totals()
        self.log.info("login", method=method, user=self.mailbox, messages=count, octets=size,
                      tls=self.tls.version if self.tls else None)
        return Step([replies.POP_LOGGED_IN.fill(mailbox=self.mailbox, count=count, size=size)])

    def _quit(self, argument: str) -> Step:
        if self.state is not State.TRANSACTION:
            self.close("quit")
            return Step([replies.POP_BYE], Action.CLOSE)
        return self._update()

    # ------------------------------------------------------------ TRANSACTION

    def _totals(self) -> tuple[int, int]:
        live = [m.size for i, m in enumerate(self.messages) if i not in self.deleted]
        return len(live), sum(live)

    def _message(self, text: str) -> tuple[int, StoredMessage]:
        """The message a number argument names (0-based index, message), or Reject."""
        text = text.strip()
        if not wire.is_number(text):
            raise Reject(replies.POP_NUMBER_REQUIRED)
        index = int(text) - 1
        if not 0 <= index < len(self.messages):
            raise Reject(replies.POP_NO_SUCH_MESSAGE)
        if index in self.deleted:
            raise Reject(replies.POP_ALREADY_DELETED)
        return index, self.messages[index]

    def _stat(self, argument: str) -> Step:
        count, size = self._totals()
        return Step([replies.POP_STAT.fill(count=count, size=size)])

    def _list(self, argument: str) -> Step:
        count, size = self._totals()
        return self._listing(argument, lambda message: message.size,
                             replies.POP_LIST.fill(count=count, size=size))

    def _uidl(self, argument: str) -> Step:
        return self._listing(argument, lambda message: message.uid, replies.POP_UIDL)

    def _listing(self, argument: str, value: Callable, header: PopReply) -> Step:
        """LIST and UIDL: one message's line, or every message not marked deleted."""
        if argument.strip():
            index, message = self._message(argument)
            return Step([replies.POP_SCAN_LINE.fill(number=index + 1, value=value(message))])
        lines = [f"{i + 1} {value(m)}" for i, m in enumerate(self.messages)
                 if i not in self.deleted]
        return Step([header], body=_lines(lines))

    def _retr(self, argument: str) -> Step:
        index, message = self._message(argument)
        reply = replies.POP_RETR.fill(size=message.size)
        if message.octets is not None and message.octets <= RETR_CHUNK:
            try:
                data = self.store.read_whole(message)
            except FileNotFoundError:
                raise self._vanished(message) from None
            self.retrieved.add(index)
            encoder = wire.MessageEncoder(message.crlf)
            return Step([reply], body=(encoder.feed(data) + encoder.finish(),))
        handle = self._open(message)
        self.retrieved.add(index)
        return Step([reply], body=_stream(handle, message.crlf))

    def _top(self, argument: str) -> Step:
        parts = argument.split()
        if len(parts) != 2 or not wire.is_number(parts[1]):
            raise Reject(replies.POP_TOP_SYNTAX)
        _, message = self._message(parts[0])
        handle = self._open(message)
        return Step([replies.POP_TOP], body=_top(handle, message.crlf, int(parts[1])))

    def _open(self, message: StoredMessage) -> BinaryIO:
        try:
            return self.store.open(message)
        except FileNotFoundError:
            raise self._vanished(message) from None

    def _vanished(self, message: StoredMessage) -> Reject:
        self.log.warning("message_vanished", user=self.mailbox, uid=message.uid)
        return Reject(replies.POP_VANISHED)

    def _dele(self, argument: str) -> Step:
        index, _ = self._message(argument)
        self.deleted.add(index)
        return Step([replies.POP_MARKED.fill(number=index + 1)])

    def _rset(self, argument: str) -> Step:
        self.deleted.clear()
        count, size = self._totals()
        return Step([replies.POP_RESET.fill(count=count, size=size)])

    def _noop(self, argument: str) -> Step:
        return Step([replies.POP_NOOP])

    def _update(self) -> Step:
        """RFC 1939 6: the UPDATE state. Deletions and Seen flags happen now."""
        mailbox = self.mailbox
        if mailbox is None:
            raise RuntimeError("UPDATE without a login")
        failed = 0
        for index, message in enumerate(self.messages):
            try:
                if index in self.deleted:
                    self.store.delete(message)
                elif index in self.retrieved:
                    self.store.mark_seen(message)
            except OSError as error:
                failed += 1
                self.log.error("update_failed", user=mailbox, uid=message.uid,
                               error=str(error))
        try:
            self.store.sync(mailbox)
        except OSError:
            failed += 1
        count = len(self.messages) - len(self.deleted)
        self.log.info("quit", user=mailbox, retrieved=len(self.retrieved),
                      deleted=len(self.deleted), left=count, failed=failed or None)
        self.close("quit")
        if failed:
            return Step([replies.POP_UPDATE_FAILED], Action.CLOSE)
        return Step([replies.POP_UPDATED.fill(deleted=len(self.deleted), left=count)],
                    Action.CLOSE)


def _lines(lines: list[str]) -> Iterator[bytes]:
    """A multi-line response body: the lines (byte-stuffed) and the final '.'."""
    body = "\r\n".join(lines)
    if body.startswith(".") or "\r\n." in body:
        body = "\r\n".join("." + line if line.startswith(".") else line for line in lines)
    yield (body + "\r\n.\r\n" if lines else ".\r\n").encode("utf-8", "replace")


def _stream(handle, foreign: bool) -> Iterator[bytes]:
    """RETR of a big message (or another program's): the file in chunks, CRLF and
    byte-stuffed, then '.'; always closes the file."""
    encoder = wire.MessageEncoder(foreign)
    try:
        while chunk := handle.read(RETR_CHUNK):
            out = encoder.feed(chunk)
            if out:
                yield out
        yield encoder.finish()
    finally:
        handle.close()


def _top(handle, foreign: bool, body_lines: int) -> Iterator[bytes]:
    """TOP: the header, the blank line, then `body_lines` lines of the body."""
    encoder = wire.MessageEncoder(foreign)
    try:
        in_header = True
        left = body_lines
        pieces = []
        for line in io.BufferedReader(handle, RETR_CHUNK):   # the raw file reads bytewise
            if in_header:
                pieces.append(encoder.feed(line))
                if line in (b"\n", b"\r\n"):
                    in_header = False
            elif left > 0:
                pieces.append(encoder.feed(line))
                left -= 1
            else:
                break
            if len(pieces) >= 256:
                yield b"".join(pieces)
                pieces = []
        pieces.append(encoder.finish())
        yield b"".join(pieces)
    finally:
        handle.close()


_AUTHZ = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = _AUTHZ | _TRANS

COMMANDS: dict[str, Command] = {
    "CAPA": Command(_BOTH, Pop3Session._capa),
    "STLS": Command(_AUTHZ, Pop3Session._stls),
    "USER": Command(_AUTHZ, Pop3Session._user),
    "PASS": Command(_AUTHZ, Pop3Session._pass),
    "AUTH": Command(_AUTHZ, Pop3Session._auth),
    "QUIT": Command(_BOTH, Pop3Session._quit),
    "STAT": Command(_TRANS, Pop3Session._stat),
    "LIST": Command(_TRANS, Pop3Session._list),
    "UIDL": Command(_TRANS, Pop3Session._uidl),
    "RETR": Command(_TRANS, Pop3Session._retr),
    "TOP": Command(_TRANS, Pop3Session._top),
    "DELE": Command(_TRANS, Pop3Session._dele),
    "RSET": Command(_TRANS, Pop3Session._rset),
    "NOOP": Command(_TRANS, Pop3Session._noop),
}
