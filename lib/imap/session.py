"""The IMAP engine (RFC 9051 IMAP4rev2; RFC 3501 IMAP4rev1 clients too): a
state machine fed lines and literal octets, answering with Steps.

How the socket handler drives it (the Engine protocol of session/engine.py,
plus IDLE):

- Read a line of at most `max_line` octets (LF included) and `feed_line` it;
  `line_too_long` when it was longer (the reader has dropped the rest).
- While `receiving_data` is true, a literal is expected: read raw bytes
  (`literal_remaining` says how many the engine still wants; more does no
  harm) and `feed_data` them; put the Step's `leftover` back in front of
  the input. A synchronising literal `{n}` gets `+ Ready` first (in the
  Step that `feed_line` returned); `{n+}` (LITERAL+) gets nothing and is
  simply read. A refused literal is still read (and dropped) when the client
  will send it anyway, so its octets are never taken for commands.
- Write a Step's replies, then its `body` chunks (FETCH streams message
  octets from files this way, and the tagged completion is the body's last
  chunk), then perform its action: START_TLS (STARTTLS), CLOSE (LOGOUT,
  too many errors, timeout, shutdown).
- While `idling` is true (after IDLE), wait for a line with a timeout of
  about IDLE_POLL_SECONDS; whenever none came, call `poll()` and write the
  Step it returns (new mail, flag changes, expunges). The line that ends
  IDLE ("DONE") goes to `feed_line` as usual. An IDLE client is silent for
  up to 29 minutes (RFC 9051 6.3.13), so `command_timeout` should not apply
  while idling; IDLE_TIMEOUT is the limit then.
- `timeout()`, `shutdown()`, `tls_started()`, `tls_failed()` and `close()`
  as for SMTP and POP3.

No sockets inside, but through the store: a login waits for a password-check
slot (~25 ms of scrypt) and makes the four special-use folders if missing;
commands list folders, read and rename message files and write UID lists.

Refusals are raised (Reject, FolderError, ParseError) and answered in one
place (`_run`); BAD answers count towards MAX_BAD_COMMANDS. A command that
fails unexpectedly is logged with its traceback and answered NO [SERVERBUG].
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..config.tls import TlsInfo
from ..core import passwords, wire
from ..core import replies as r
from ..core.errors import Reject
from ..core.replies import ImapData, ImapReply
from ..log.events import EventLog
from ..session.engine import Action, ClientInfo, SessionBasics, Step
from ..session.runtime import Runtime, Services
from ..store import mutf7
from ..store.folders import (
    Account,
    BadFolderName,
    FolderError,
    FolderExists,
    FolderMissing,
    MailStore,
    canonical,
)
from . import mailboxes, messages
from .cache import MessageCache
from .framing import MAX_COMMAND, MAX_LITERAL, Framer, MemorySink, MessageSink, NullSink
from .lexer import LITERAL_ANNOUNCEMENT, ParseError
from .parser import Command, append_target, parse_command
from .selected import Selected, ValidityChanged

MAX_LINE = 64 * 1024          # a command line (Dovecot's imap_max_line_length)
MAX_BAD_COMMANDS = 20         # then BYE, as SMTP and POP3 do
IDLE_POLL_SECONDS = 1.0       # how often the handler asks poll() during IDLE
IDLE_TIMEOUT = 30 * 60        # RFC 9051 5.4: an idle client may be silent this long
CAPABILITIES = ("IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE",
                "NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "SPECIAL-USE", "LIST-EXTENDED",
                "LIST-STATUS", "CHILDREN", "ESEARCH", "SEARCHRES", "STATUS=SIZE", "BINARY")
ENABLEABLE = frozenset({"IMAP4REV2"})


class State(enum.Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


Handler = Callable[["ImapSession", Command], Step]


@dataclass(frozen=True)
class Entry:
    allowed: frozenset[State]
    run: Handler
    expunges: bool = True         # may EXPUNGE responses follow? Not after FETCH, STORE, SEARCH
    fast: bool = False            # the look at the folder after it may be a fast one


class ImapSession(SessionBasics):
    component = "imap"
    greet_pause = 0.0             # IMAP clients wait for the greeting; no pregreet test

    def __init__(self, runtime: Runtime, services: Services, client: ClientInfo,
                 log: EventLog | None = None, session_id: str | None = None,
                 mailstore: MailStore | None = None):
        super().__init__(runtime, services, client, log, session_id)
        self.mailstore = mailstore or MailStore.of(services.store)
        self.cache = MessageCache.of(self.mailstore)
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.account: Account | None = None
        self._selected: Selected | None = None
        self.enabled: set[str] = set()
        self.framer = Framer()
        self.sasl_tag: str | None = None          # inside AUTHENTICATE: its tag
        self.idle_tag: str | None = None          # inside IDLE: its tag
        self.bad_commands = 0

    @property
    def selected(self) -> Selected | None:
        return self._selected

    @selected.setter
    def selected(self, view: Selected | None) -> None:
        """Leaving a folder (another SELECT, CLOSE, UNSELECT, logout, a lost
        connection) lets a big claim of its new mail begin."""
        left, self._selected = self._selected, view
        if left is not None and left is not view:
            left.index.release_claim()

    # ------------------------------------------------------------ what the handler asks

    @property
    def receiving_data(self) -> bool:
        return self.framer.remaining > 0

    @property
    def literal_remaining(self) -> int:
        return self.framer.remaining

    @property
    def max_line(self) -> int:
        return wire.MAX_SASL_LINE if self.sasl_tag is not None else MAX_LINE

    @property
    def idling(self) -> bool:
        return self.idle_tag is not None

    @property
    def idle(self) -> bool:
        """Between commands (or in IDLE), nothing in flight: a shutdown may end it at once."""
        framer = self.framer
        return (self.sasl_tag is None and framer.remaining == 0 and not framer.segments
                and self.state is not State.LOGOUT)

    @property
    def utf8(self) -> bool:
        """Folder names and strings in UTF-8 (IMAP4rev2 enabled), not modified UTF-7."""
        return "IMAP4REV2" in self.enabled

    def capabilities(self) -> str:
        caps = list(CAPABILITIES)
        if self.state is State.NOT_AUTHENTICATED:
            if self.tls_offered:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.auth_allowed else "LOGINDISABLED")
        return " ".join(caps)

    # ------------------------------------------------------------ events

    def greeting(self, early: bytes = b"") -> Step:
        self.log.info("connect", client=f"{self.client.ip}:{self.client.port}",
                      listener=self.client.listener, tls=self.tls.version if self.tls else None)
        return self._say(Step([r.IMAP_GREETING.fill(host=self.runtime.hostname,
                                                   capabilities=self.capabilities())]))

    def tls_started(self, info: TlsInfo) -> None:
        self.tls = info
        self.log.info("starttls", version=info.version, cipher=info.cipher)

    def tls_failed(self, reason: str) -> None:
        self.log.warning("tls_failed", reason=reason)
        self.close("tls handshake failed")

    def timeout(self) -> Step:
        self.close("timeout")
        return self._say(Step([r.IMAP_TIMEOUT], Action.CLOSE))

    def shutdown(self) -> Step:
        self.close("server shutting down")
        return self._say(Step([r.IMAP_SHUTTING_DOWN], Action.CLOSE))

    def line_too_long(self) -> Step:
        """The reader dropped a line: the command it belonged to is lost too."""
        tag = self.sasl_tag or self.framer.tag
        self.framer.drop()
        self.sasl_tag = None
        reply = r.IMAP_LINE_TOO_LONG.tagged(tag) if tag else r.IMAP_LINE_TOO_LONG
        return self._error(reply)

    def close(self, reason: str = "client closed") -> None:
        if self.state is State.LOGOUT:
            return
        self.framer.drop()
        self.log.info("disconnect", reason=reason, user=self.user)
        self.state = State.LOGOUT
        self.selected = None
        self.idle_tag = self.sasl_tag = None

    # ------------------------------------------------------------ input

    def feed_line(self, line: bytes, more_input: bool = False) -> Step:
        """A command line; `more_input` is ignored (IMAP clients may pipeline freely)."""
        try:
            return self._feed_line(line)
        except Exception:                    # a bug: answer, keep the session usable
            self.log.exception("internal_error", state=self.state.value, user=self.user)
            tag = self.framer.tag
            self.framer.drop()
            self.sasl_tag = self.idle_tag = None
            reply = r.IMAP_SERVER_BUG
            return self._say(Step([reply.tagged(tag) if tag else reply]))

    def _feed_line(self, line: bytes) -> Step:
        if self.state is State.LOGOUT:
            return Step([])
        text = line.rstrip(b"\n").rstrip(b"\r")
        if self.log.debugging:
            self.log.debug("recv", line=self._masked(text))
        if self.sasl_tag is not None:
            return self._say(self._sasl_response(text))
        if self.idle_tag is not None:
            return self._say(self._idle_line(text))
        framer = self.framer
        if b"\0" in text and framer.refusal is None:
            framer.refusal = r.IMAP_NUL_IN_COMMAND
        framer.add_line(text)
        if framer.size > MAX_COMMAND and framer.refusal is None:
            framer.refusal = r.IMAP_COMMAND_TOO_BIG
        announced = LITERAL_ANNOUNCEMENT.search(text)
        if announced is not None:
            return self._say(self._literal(int(announced[2]), announced[3] == b"+"))
        segments, literals, refusal = framer.take()
        try:
            if refusal is not None:
                tag = _tag(segments[0])
                return self._say(self._answer(refusal.tagged(tag) if tag else refusal))
            return self._say(self._run(segments, literals))
        finally:
            for literal in literals:
                if isinstance(literal, MessageSink):
                    literal.discard()          # committed by APPEND, or not wanted

    def _literal(self, octets: int, non_sync: bool) -> Step:
        """A literal was announced: say go ahead (or refuse), and how to keep it."""
        framer = self.framer
        refusal = framer.refusal
        sink = None
        if refusal is None:
            sink, refusal = self._literal_sink(octets)
        if refusal is not None and not non_sync:      # the client waits: refuse it now
            tag = framer.tag
            framer.drop()
            return self._answer(refusal.tagged(tag) if tag else refusal)
        framer.refusal = refusal
        framer.expect(octets, sink or NullSink())
        return Step([] if non_sync else [r.IMAP_CONTINUE_LITERAL])

    def _literal_sink(self, octets: int) -> tuple[MemorySink | MessageSink | None,
                                                  ImapReply | None]:
        framer = self.framer
        target = None
        if self.state in (State.AUTHENTICATED, State.SELECTED):
            target = append_target(framer.segments, framer.literals)
        if target is None:
            if octets > MAX_LITERAL or framer.size + octets > MAX_COMMAND:
                return None, r.IMAP_LITERAL_TOO_BIG
            return MemorySink(), None
        if octets > self.config.limits.max_message_size:
            return None, r.IMAP_TOO_BIG
        if octets == 0:
            return None, r.IMAP_EMPTY_MESSAGE
        try:
            name = self.folder_name(target)
            folder = self._account().index(name).path
            return MessageSink(folder, self.services.store.unique_base()), None
        except Reject as refused:
            return None, refused.reply
        except FolderMissing:
            return None, r.IMAP_TRY_CREATE
        except BadFolderName as error:
            return None, r.IMAP_BAD_FOLDER_NAME.fill(detail=str(error))
        except OSError as error:               # the folder's tmp/ is gone, the disk is full
            self.log.error("imap_error", user=self.user, command="APPEND", error=str(error))
            return None, r.IMAP_TEMPORARY

    def feed_data(self, chunk: bytes) -> Step:
        try:
            return Step([], leftover=self.framer.feed(chunk))
        except Exception:
            self.log.exception("internal_error", state=self.state.value, user=self.user)
            self.framer.drop()
            self.close("internal error")
            return self._say(Step([r.IMAP_SERVER_BUG], Action.CLOSE))

    def poll(self) -> Step:
        """During IDLE: what changed in the selected folder since the last look."""
        if self.idle_tag is None or self.selected is None:
            return Step([])
        try:
            return self._say(Step(list(self.selected.refresh(allow_expunge=True))))
        except ValidityChanged:
            return self._say(self._renumbered())
        except OSError as error:
            self.log.error("imap_error", user=self.user, error=str(error))
            return Step([])
        except Exception:
            self.log.exception("internal_error", state=self.state.value, user=self.user)
            return Step([])

    # ------------------------------------------------------------ commands

    def _run(self, segments: list[bytes], literals: list[object]) -> Step:
        try:
            command = parse_command(segments, literals)
        except ParseError as error:
            reply = r.IMAP_SYNTAX.fill(detail=str(error))
            return self._answer(reply.tagged(error.tag) if error.tag else reply)
        entry = COMMANDS[command.name]
        tag = command.tag
        if self.state not in entry.allowed:
            return self._answer(r.IMAP_WRONG_STATE.tagged(tag))
        try:
            step = entry.run(self, command)
            if step.body is None and self.selected is not None and step.replies:
                updates = self.selected.refresh(entry.expunges or command.uid, command.uid,
                                                fast=entry.fast)
                if updates:
                    step = step._replace(replies=step.replies[:-1] + updates + step.replies[-1:])
            return step
        except Reject as refused:
            return self._answer(refused.reply.tagged(tag))
        except FolderMissing:
            return self._answer(r.IMAP_NO_SUCH_FOLDER.tagged(tag))
        except FolderExists:
            return self._answer(r.IMAP_FOLDER_EXISTS.tagged(tag))
        except FolderError as error:
            return self._answer(r.IMAP_BAD_FOLDER_NAME.fill(detail=str(error)).tagged(tag))
        except ValidityChanged:
            return self._renumbered()
        except OSError as error:               # the Maildir went away or the disk failed
            self.log.exception("imap_error", user=self.user, command=command.name,
                               error=str(error))
            return Step([r.IMAP_TEMPORARY.tagged(tag)])
        except Exception:                      # a bug: answer, keep the session usable
            self.log.exception("internal_error", state=self.state.value, user=self.user,
                               command=command.name)
            return Step([r.IMAP_SERVER_BUG.tagged(tag)])

    def _answer(self, reply: ImapReply) -> Step:
        return self._error(reply) if reply.status == "BAD" else Step([reply])

    def _error(self, *replies: ImapReply | ImapData) -> Step:
        self.bad_commands += 1
        if self.bad_commands > MAX_BAD_COMMANDS:
            self.log.warning("too_many_errors", count=self.bad_commands)
            self.close("too many errors")
            return Step([*replies, r.IMAP_TOO_MANY_ERRORS], Action.CLOSE)
        return Step(list(replies))

    def _renumbered(self) -> Step:
        self.log.error("uidvalidity_changed", user=self.user,
                       folder=self.selected.name if self.selected else None)
        self.close("uidvalidity changed")
        return Step([r.IMAP_VALIDITY_CHANGED], Action.CLOSE)

    def _masked(self, text: bytes) -> str:
        """The line for the debug log, with passwords and SASL data replaced by ****."""
        if self.sasl_tag is not None:
            return "****"
        words = text.decode("utf-8", "replace").split(" ")
        verb = words[1].upper() if len(words) > 1 else ""
        if verb == "LOGIN" or (verb == "AUTHENTICATE" and len(words) > 3):
            return " ".join(words[:3]) + " ****"
        return text.decode("utf-8", "replace")

    # ------------------------------------------------------------ helpers for handlers

    def folder_name(self, raw: str) -> str:
        """A folder name from the wire: UTF-8 with IMAP4rev2, modified UTF-7 before."""
        if self.utf8 or not raw.isascii():
            return canonical(raw)
        try:
            return canonical(mutf7.decode(raw))
        except mutf7.Mutf7Error:
            raise Reject(r.IMAP_BAD_FOLDER_ENCODING) from None

    def _account(self) -> Account:
        if self.account is None:
            raise RuntimeError("no account before login")
        return self.account

    def done(self, command: Command, *untagged: ImapData | ImapReply) -> Step:
        """The untagged responses and `<tag> OK <COMMAND> completed`."""
        return Step([*untagged, r.IMAP_DONE.fill(command=command.name).tagged(command.tag)])

    # ------------------------------------------------------------ any state

    def _capability(self, command: Command) -> Step:
        return self.done(command, ImapData(b"CAPABILITY " + self.capabilities().encode()))

    def _noop(self, command: Command) -> Step:
        return self.done(command)

    def _logout(self, command: Command) -> Step:
        self.log.info("logout", user=self.user)
        self.close("logout")
        return Step([r.IMAP_LOGOUT, r.IMAP_DONE.fill(command="LOGOUT").tagged(command.tag)],
                    Action.CLOSE)

    def _id(self, command: Command) -> Step:
        fields = command.args if isinstance(command.args, dict) else {}
        if fields:
            self.log.info("client_id", **{f"id_{k.lower()[:20]}": (v or "")[:80]
                                          for k, v in list(fields.items())[:8]
                                          if k.replace("-", "").isalnum()})
        return self.done(command, ImapData(b'ID ("name" "mailbox_appliance")'))

    # ------------------------------------------------------------ not authenticated

    def _starttls(self, command: Command) -> Step:
        if self.tls is not None:
            raise Reject(r.IMAP_TLS_ACTIVE)
        if self.runtime.tls is None:
            raise Reject(r.IMAP_TLS_UNAVAILABLE)
        return Step([r.IMAP_TLS_BEGIN.tagged(command.tag)], Action.START_TLS)

    def _login_command(self, command: Command) -> Step:
        if not self.auth_allowed:
            raise Reject(r.IMAP_PLAINTEXT_REFUSED)
        user, password = command.args
        return self._login("LOGIN", user, password, command.tag)

    def _authenticate(self, command: Command) -> Step:
        mechanism, initial = command.args
        if mechanism != "PLAIN":
            raise Reject(r.IMAP_UNKNOWN_MECHANISM)
        if not self.auth_allowed:
            raise Reject(r.IMAP_PLAINTEXT_REFUSED)
        if initial is not None:                 # SASL-IR (RFC 4959)
            return self._plain(initial.encode(), command.tag)
        self.sasl_tag = command.tag
        return Step([r.IMAP_CONTINUE_SASL])

    def _sasl_response(self, text: bytes) -> Step:
        tag, self.sasl_tag = self.sasl_tag or "*", None
        if text.strip() == b"*":
            return self._answer(r.IMAP_AUTH_CANCELLED.tagged(tag))
        try:
            return self._plain(text, tag)
        except Reject as refused:
            return self._answer(refused.reply.tagged(tag))

    def _plain(self, response: bytes, tag: str) -> Step:
        try:
            decoded = passwords.b64decode_response(response.decode("ascii", "replace"))
            name, secret = passwords.decode_plain(decoded)
        except passwords.SaslError as error:
            return self._answer(r.IMAP_BAD_CREDENTIALS.fill(detail=str(error)).tagged(tag))
        return self._login("PLAIN", name, secret, tag)

    def _login(self, method: str, name: str, secret: str, tag: str) -> Step:
        result = self.services.auth.login(self.router, self.client.ip, name, secret)
        if result.mailbox is None:
            self.log.warning("login_failed", method=method, user=name[:64], reason=result.reason,
                             client=self.client.ip)
            raise Reject(r.IMAP_AUTH_LOCKED if result.locked else r.IMAP_AUTH_FAILED)
        try:
            account = self.mailstore.account(result.mailbox)
            account.ensure_special()
        except OSError as error:
            self.log.error("login_failed", user=result.mailbox, reason=f"cannot open: {error}")
            raise Reject(r.IMAP_TEMPORARY) from None
        self.account, self.user = account, result.mailbox
        self.state = State.AUTHENTICATED
        self.log.info("login", method=method, user=self.user,
                      tls=self.tls.version if self.tls else None)
        return Step([r.IMAP_LOGGED_IN.fill(capabilities=self.capabilities()).tagged(tag)])

    # ------------------------------------------------------------ authenticated

    def _enable(self, command: Command) -> Step:
        wanted = [name for name in command.args if name in ENABLEABLE]
        fresh = [name for name in wanted if name not in self.enabled]
        self.enabled.update(wanted)
        text = b"ENABLED" + b"".join(b" " + n.replace("REV", "rev").encode() for n in fresh)
        return self.done(command, ImapData(text))

    def _namespace(self, command: Command) -> Step:
        return self.done(command, ImapData(b'NAMESPACE (("" ".")) NIL NIL'))

    def _idle(self, command: Command) -> Step:
        self.idle_tag = command.tag
        updates = self.selected.refresh(allow_expunge=True) if self.selected else []
        if self.selected:
            self.selected.index.release_claim()     # the client rests: time for housekeeping
        return Step([*updates, r.IMAP_CONTINUE_IDLE])

    def _idle_line(self, text: bytes) -> Step:
        tag, self.idle_tag = self.idle_tag or "*", None
        updates: list = []
        if self.selected is not None:
            try:
                updates = self.selected.refresh(allow_expunge=True)
            except ValidityChanged:
                return self._renumbered()
        if text.strip().upper() != b"DONE":
            return self._error(*updates, r.IMAP_EXPECTED_DONE.tagged(tag))
        return Step([*updates, r.IMAP_IDLE_DONE.tagged(tag)])


def _tag(segment: bytes) -> str | None:
    framer = Framer()
    framer.add_line(segment)
    return framer.tag


_ANY = frozenset(State) - {State.LOGOUT}
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

COMMANDS: dict[str, Entry] = {
    "CAPABILITY": Entry(_ANY, ImapSession._capability),
    "NOOP": Entry(_ANY, ImapSession._noop),
    "LOGOUT": Entry(_ANY, ImapSession._logout),
    "ID": Entry(_ANY, ImapSession._id),
    "STARTTLS": Entry(_NOT_AUTH, ImapSession._starttls),
    "LOGIN": Entry(_NOT_AUTH, ImapSession._login_command),
    "AUTHENTICATE": Entry(_NOT_AUTH, ImapSession._authenticate),
    "ENABLE": Entry(frozenset({State.AUTHENTICATED}), ImapSession._enable),
    "NAMESPACE": Entry(_AUTH, ImapSession._namespace),
    "IDLE": Entry(_AUTH, ImapSession._idle),
    "SELECT": Entry(_AUTH, mailboxes.select, fast=True),   # it has just looked
    "EXAMINE": Entry(_AUTH, mailboxes.select, fast=True),   # it has just looked
    "CREATE": Entry(_AUTH, mailboxes.create),
    "DELETE": Entry(_AUTH, mailboxes.delete),
    "RENAME": Entry(_AUTH, mailboxes.rename),
    "SUBSCRIBE": Entry(_AUTH, mailboxes.subscribe),
    "UNSUBSCRIBE": Entry(_AUTH, mailboxes.unsubscribe),
    "LIST": Entry(_AUTH, mailboxes.list_folders),
    "LSUB": Entry(_AUTH, mailboxes.lsub),
    "STATUS": Entry(_AUTH, mailboxes.status),
    "APPEND": Entry(_AUTH, mailboxes.append),
    "CHECK": Entry(_SELECTED, ImapSession._noop),
    "CLOSE": Entry(_SELECTED, mailboxes.close),
    "UNSELECT": Entry(_SELECTED, mailboxes.unselect),
    "EXPUNGE": Entry(_SELECTED, messages.expunge),
    "UID EXPUNGE": Entry(_SELECTED, messages.expunge),
    "SEARCH": Entry(_SELECTED, messages.search, expunges=False, fast=True),
    "UID SEARCH": Entry(_SELECTED, messages.search, fast=True),
    "FETCH": Entry(_SELECTED, messages.fetch, expunges=False, fast=True),
    "UID FETCH": Entry(_SELECTED, messages.fetch, fast=True),
    "STORE": Entry(_SELECTED, messages.store, expunges=False, fast=True),
    "UID STORE": Entry(_SELECTED, messages.store, fast=True),
    "COPY": Entry(_SELECTED, messages.copy, fast=True),
    "UID COPY": Entry(_SELECTED, messages.copy, fast=True),
    "MOVE": Entry(_SELECTED, messages.move),
    "UID MOVE": Entry(_SELECTED, messages.move),
}
