"""The SMTP engine (RFC 5321 + ESMTP extensions): a state machine fed command
lines and DATA chunks, answering with replies and, rarely, an action.

No sockets, threads or clocks inside: the listener reads bytes, feeds them
here, writes the replies back and performs the action (start TLS, close).
The session lives as long as the connection (peer, TLS, login); the
Transaction lives from MAIL to the end of DATA and is replaced whole on RSET,
EHLO, STARTTLS and after each message.

Extensions: SIZE (RFC 1870), PIPELINING (2920), 8BITMIME (6152),
ENHANCEDSTATUSCODES (2034/3463), STARTTLS (3207), AUTH PLAIN LOGIN (4954),
SMTPUTF8 (6531).
"""

from __future__ import annotations

import email.utils
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..checks import trust
from ..checks.filter import run_filter
from ..config.router import REJECTED, REMOTE, Resolution
from ..config.tls import TlsInfo
from ..core import passwords, replies, wire
from ..core.addresses import Address, AddressError, parse_path
from ..core.errors import Reject
from ..core.replies import Reply
from ..log.events import EventLog
from ..session.engine import Action, ClientInfo, SessionBasics, Step
from ..session.runtime import Runtime, Services
from ..store.intake import Destinations, Incoming, path_text
from ..store.spool import new_id

MAX_BAD_COMMANDS = 20        # then 421 and close, as Postfix's smtpd_hard_error_limit
# replies that count towards it: syntax and sequence errors, and refused
# recipients (so an address list cannot be probed without end), as Postfix counts
CLIENT_ERRORS = frozenset({500, 501, 502, 503, 504, 550, 553, 554, 555})
HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"})
NOT_IMPLEMENTED_VERBS = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "BDAT", "SEND", "SOML",
                                   "SAML"})
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.:\[\]_-]")
LOGIN_USERNAME = "VXNlcm5hbWU6"    # base64 "Username:"
LOGIN_PASSWORD = "UGFzc3dvcmQ6"    # base64 "Password:"


class State(enum.Enum):
    CONNECTED = "connected"       # greeted; no EHLO/HELO yet
    READY = "ready"               # EHLO/HELO done; no transaction
    MAIL = "mail"                 # MAIL FROM accepted
    RCPT = "rcpt"                 # at least one RCPT TO accepted
    DATA = "data"                 # receiving the message
    AUTH = "auth"                 # inside a SASL exchange
    CLOSED = "closed"


@dataclass
class Transaction:
    """One message: MAIL FROM to end of DATA."""
    sender: Address | None
    utf8: bool = False
    recipients: list[tuple[Address, Resolution]] = field(default_factory=list)
    id: str = field(default_factory=new_id)


@dataclass(frozen=True)
class Command:
    allowed: frozenset            # states in which the verb may be used
    run: Callable                 # SmtpSession method: (session, argument) -> Step
    refusal: str                  # what 503 says when used in another state


def _reply(*items: Reply, action: Action = Action.NONE) -> Step:
    return Step(list(items), action)


class SmtpSession(SessionBasics):
    component = "smtp"

    def __init__(self, runtime: Runtime, services: Services, client: ClientInfo,
                 log: EventLog | None = None, session_id: str | None = None):
        super().__init__(runtime, services, client, log, session_id)
        self.state = State.CONNECTED
        self.helo: str | None = None
        self.esmtp = False
        self.user: str | None = None                # the mailbox logged in as
        self.trusted = trust.is_trusted(self.config, client.ip)
        self.transaction: Transaction | None = None
        self.bad_commands = 0
        self.messages = 0
        self._auth: tuple[str, str | None] | None = None   # (mechanism, login name so far)
        self._incoming: Incoming | None = None
        self._receiver: wire.DataReceiver | None = None
        self._write_error = False          # the disk refused part of the current message

    # ------------------------------------------------------------ what the handler asks

    @property
    def receiving_data(self) -> bool:
        return self.state is State.DATA

    @property
    def max_line(self) -> int:
        return wire.MAX_SASL_LINE if self.state is State.AUTH else wire.MAX_COMMAND_LINE

    @property
    def host(self) -> str:
        return self.runtime.hostname

    # ------------------------------------------------------------ events

    def greeting(self) -> Step:
        self.log.info("connect", client=f"{self.client.ip}:{self.client.port}",
                      listener=self.client.listener,
                      tls=self.tls.version if self.tls else None,
                      trusted=self.trusted or None)
        return self._say(_reply(replies.GREETING.fill(host=self.host)))

    def tls_started(self, info: TlsInfo) -> None:
        """RFC 3207 4.2: forget everything learnt before the handshake."""
        self.tls = info
        self.state = State.CONNECTED
        self.helo = None
        self.esmtp = False
        self.user = None
        self._abort_transaction()
        self.log.info("starttls", version=info.version, cipher=info.cipher)

    def tls_failed(self, reason: str) -> None:
        self.log.warning("tls_failed", reason=reason)
        self.close("tls handshake failed")

    def timeout(self) -> Step:
        self.log.info("timeout", state=self.state.value)
        self.close("timeout")
        return self._say(_reply(replies.TIMEOUT.fill(host=self.host), action=Action.CLOSE))

    def shutdown(self) -> Step:
        self.close("server shutting down")
        return self._say(_reply(replies.SHUTTING_DOWN.fill(host=self.host), action=Action.CLOSE))

    def line_too_long(self) -> Step:
        self.log.info("line_too_long", state=self.state.value)
        if self.state is State.AUTH:
            self._auth = None
            self.state = State.READY
        return self._error(replies.LINE_TOO_LONG)

    def close(self, reason: str = "client closed") -> None:
        """The connection is gone or going: drop any half-received message."""
        if self.state is State.CLOSED:
            return
        aborted = self._incoming is not None
        self._abort_transaction()
        self.state = State.CLOSED
        self.log.info("disconnect", reason=reason, messages=self.messages,
                      aborted_data=aborted or None)

    # ------------------------------------------------------------ commands

    def feed_line(self, line: bytes) -> Step:
        """One command line (with its CRLF or LF)."""
        try:
            return self._feed_line(line)
        except Exception:                    # a bug: say 451, keep the session usable
            self.log.exception("internal_error", state=self.state.value)
            self._reset()
            if self.state is State.AUTH:
                self._auth = None
                self.state = State.READY
            return self._say(_reply(replies.LOCAL_ERROR))

    def _feed_line(self, line: bytes) -> Step:
        if self.state is State.CLOSED:
            return Step([])
        if self.state is State.DATA:
            raise RuntimeError("feed_line during DATA; use feed_data")
        text = line.rstrip(b"\n").rstrip(b"\r")
        if self.log.debugging:
            self.log.debug("recv", line=self._masked(text))
        if b"\0" in text:
            return self._error(replies.NUL_IN_COMMAND)
        decoded = text.decode("utf-8", "surrogateescape")
        if self.state is State.AUTH:
            step = self._auth_response(decoded)
            if step.replies[0].code in CLIENT_ERRORS:
                return self._error(*step.replies)
            return self._say(step)
        verb, _, argument = decoded.partition(" ")
        verb = verb.upper()
        command = COMMANDS.get(verb)
        if command is None:
            if verb in HTTP_VERBS:
                self.log.warning("http_command", verb=verb)
                self.close("http command")
                return self._say(_reply(replies.HTTP_REFUSED, action=Action.CLOSE))
            if verb in NOT_IMPLEMENTED_VERBS:
                return self._error(replies.NOT_IMPLEMENTED)
            return self._error(replies.UNKNOWN_COMMAND)
        if self.state not in command.allowed:
            return self._error(replies.BAD_SEQUENCE.fill(detail=command.refusal))
        try:
            step = command.run(self, argument)
        except Reject as reject:
            step = Step([reject.reply])
        if any(reply.code in CLIENT_ERRORS for reply in step.replies):
            return self._error(*step.replies)
        return self._say(step)

    def _error(self, *answer: Reply) -> Step:
        """A client error: counted, and after too many the connection is closed."""
        self.bad_commands += 1
        if self.bad_commands > MAX_BAD_COMMANDS:
            self.log.warning("too_many_errors", count=self.bad_commands)
            self.close("too many errors")
            return self._say(_reply(*answer, replies.TOO_MANY_ERRORS.fill(host=self.host),
                                    action=Action.CLOSE))
        return self._say(_reply(*answer))

    def _masked(self, text: bytes) -> str:
        """The line for the debug log, with SASL secrets replaced by ****."""
        if self.state is State.AUTH:
            return "****"
        words = text.decode("utf-8", "replace").split()
        if words and words[0].upper() == "AUTH":
            return " ".join(words[:2]) + (" ****" if len(words) > 2 else "")
        return text.decode("utf-8", "replace")

    def _abort_transaction(self) -> None:
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        self._receiver = None
        self.transaction = None

    def _reset(self) -> None:
        self._abort_transaction()
        if self.state in (State.MAIL, State.RCPT, State.DATA):
            self.state = State.READY

    # ------------------------------------------------------------ EHLO / HELO

    def _ehlo(self, argument: str) -> Step:
        return self._hello(argument, esmtp=True)

    def _helo(self, argument: str) -> Step:
        return self._hello(argument, esmtp=False)

    def _hello(self, argument: str, esmtp: bool) -> Step:
        name = argument.strip()
        if not name or " " in name:
            raise Reject(replies.SYNTAX_ERROR.with_text(
                f"{'EHLO' if esmtp else 'HELO'} needs one argument: your domain or address literal"))
        self._abort_transaction()
        self.state = State.READY
        self.helo = name
        self.esmtp = esmtp
        self.log.info("helo", name=name, esmtp=esmtp)
        if not esmtp:
            return _reply(Reply(250, None, self.host))
        lines = [f"{self.host} Hello {_HELO_UNSAFE.sub('?', name)} [{self.client.ip}]",
                 "PIPELINING", f"SIZE {self.config.limits.max_message_size}", "8BITMIME",
                 "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.tls_offered:
            lines.append("STARTTLS")
        if self.auth_allowed and self.user is None:
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        return _reply(Reply(250, None, "\n".join(lines)))

    # ------------------------------------------------------------ simple commands

    def _noop(self, argument: str) -> Step:
        return _reply(replies.OK)

    def _rset(self, argument: str) -> Step:
        if argument.strip():
            raise Reject(replies.SYNTAX_ERROR.with_text("RSET takes no argument"))
        self._reset()
        return _reply(replies.RESET_OK)

    def _quit(self, argument: str) -> Step:
        self.close("quit")
        return _reply(replies.BYE, action=Action.CLOSE)

    def _help(self, argument: str) -> Step:
        return _reply(replies.HELP)

    def _vrfy(self, argument: str) -> Step:
        if not argument.strip():
            raise Reject(replies.SYNTAX_ERROR.with_text("VRFY needs an argument"))
        return _reply(replies.CANNOT_VRFY)          # never reveals which mailboxes exist

    # ------------------------------------------------------------ STARTTLS

    def _starttls(self, argument: str) -> Step:
        if self.tls is not None:
            raise Reject(replies.BAD_SEQUENCE.fill(detail="TLS is already active"))
        if self.runtime.tls is None:
            raise Reject(replies.NOT_IMPLEMENTED)
        if argument.strip():
            raise Reject(replies.SYNTAX_ERROR.with_text("STARTTLS takes no argument"))
        return _reply(replies.READY_FOR_TLS, action=Action.START_TLS)

    # ------------------------------------------------------------ AUTH (RFC 4954)

    def _auth_command(self, argument: str) -> Step:
        if self.user is not None:
            raise Reject(replies.BAD_SEQUENCE.fill(detail="already authenticated"))
        mechanism, _, initial = argument.strip().partition(" ")
        mechanism = mechanism.upper()
        if not mechanism:
            raise Reject(replies.SYNTAX_ERROR.with_text("AUTH needs a mechanism"))
        if not self.auth_allowed:
            self.log.info("auth_refused", reason="no TLS and plaintext_auth forbids it")
            raise Reject(replies.ENCRYPTION_REQUIRED)
        if mechanism not in ("PLAIN", "LOGIN"):
            raise Reject(replies.UNKNOWN_MECHANISM)
        if self.services.auth.locked(self.config, self.client.ip):
            self.log.warning("auth_locked", mechanism=mechanism)
            raise Reject(replies.AUTH_LOCKED)
        initial = initial.strip()
        self.state = State.AUTH
        self._auth = (mechanism, None)
        if initial:
            return self._auth_response(initial)
        challenge = "" if mechanism == "PLAIN" else LOGIN_USERNAME
        return _reply(replies.AUTH_CHALLENGE.fill(challenge=challenge))

    def _auth_response(self, text: str) -> Step:
        mechanism, login = self._auth
        if text.strip() == "*":
            self._auth = None
            self.state = State.READY
            return _reply(replies.AUTH_CANCELLED)
        try:
            data = passwords.b64decode_response(text)
            if mechanism == "PLAIN":
                name, secret = passwords.decode_plain(data)
                return self._finish_auth(mechanism, name, secret)
            if login is None:
                self._auth = (mechanism, passwords.decode_text(data))
                return _reply(replies.AUTH_CHALLENGE.fill(challenge=LOGIN_PASSWORD))
            return self._finish_auth(mechanism, login, passwords.decode_text(data))
        except passwords.SaslError as error:
            self._auth = None
            self.state = State.READY
            return _reply(replies.AUTH_BAD_RESPONSE.fill(detail=str(error)))

    def _finish_auth(self, mechanism: str, name: str, secret: str) -> Step:
        self._auth = None
        self.state = State.READY
        result = self.services.auth.login(self.router, self.client.ip, name, secret)
        if result.mailbox is None:
            self.log.warning("auth_failed", mechanism=mechanism, user=name[:64],
                             reason=result.reason, client=self.client.ip)
            return _reply(replies.AUTH_LOCKED if result.locked else replies.AUTH_FAILED)
        self.user = result.mailbox
        self.log.info("auth", mechanism=mechanism, user=self.user)
        return _reply(replies.AUTH_OK)

    # ------------------------------------------------------------ MAIL / RCPT

    def _mail(self, argument: str) -> Step:
        if argument[:5].upper() != "FROM:":
            raise Reject(replies.SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address>"))
        if self.client.listener != "smtp" and self.user is None:
            needs_tls = not self.auth_allowed and self.tls_offered
            self.log.info("mail_refused", reason="submission needs a login first")
            raise Reject(replies.TLS_REQUIRED if needs_tls else replies.AUTH_REQUIRED)
        sender, params = self._parse_path(argument[5:], utf8=True)
        options = _parse_params(params)
        utf8 = "SMTPUTF8" in options
        if utf8 and options["SMTPUTF8"] is not None:
            raise Reject(replies.SYNTAX_ERROR.with_text("SMTPUTF8 takes no value"))
        if sender is not None and not sender.is_ascii and not utf8:
            raise Reject(replies.NEEDS_SMTPUTF8)
        declared = None
        for key, value in options.items():
            if key == "SIZE":
                if value is None or not wire.is_number(value):
                    raise Reject(replies.SYNTAX_ERROR.with_text("SIZE needs a number"))
                declared = int(value)
                if declared > self.config.limits.max_message_size:
                    self.log.info("mail_refused", sender=path_text(sender), size=declared,
                                  reason="declared SIZE above max_message_size")
                    raise Reject(replies.MESSAGE_TOO_BIG)
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=f"BODY={value}"))
            elif key not in ("SMTPUTF8", "AUTH"):   # AUTH=<...> is allowed and ignored
                raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=key))
        if self.user is not None and sender is not None and \
                not self.router.owns(self.user, sender):
            self.log.warning("mail_refused", sender=path_text(sender), user=self.user,
                             reason="sender address does not route to the user's mailbox")
            raise Reject(replies.SENDER_NOT_OWNED.fill(user=self.user))
        waited = self.services.flow.admit()         # the queue lags: slow this client down
        if waited > 0.05:
            self.log.debug("in_flow_delay", seconds=round(waited, 2))
        self.transaction = Transaction(sender=sender, utf8=utf8)
        self.state = State.MAIL
        self.log.debug("mail", msg=self.transaction.id, sender=path_text(sender),
                       size=declared, utf8=utf8 or None)
        return _reply(replies.SENDER_OK)

    def _rcpt(self, argument: str) -> Step:
        if argument[:3].upper() != "TO:":
            raise Reject(replies.SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>"))
        transaction = self.transaction
        address, params = self._parse_path(argument[3:], utf8=True,
                                           postmaster=self.router.primary_domain)
        if address is None:
            raise Reject(replies.BAD_ADDRESS_SYNTAX.fill(detail="empty recipient"))
        if params:
            raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=params.split(" ")[0]))
        if not address.is_ascii and not transaction.utf8:
            raise Reject(replies.NEEDS_SMTPUTF8)
        if len(transaction.recipients) >= self.config.limits.max_recipients:
            self.log.info("rcpt_refused", msg=transaction.id, to=path_text(address),
                          reason="max_recipients reached")
            raise Reject(replies.TOO_MANY_RECIPIENTS)
        resolution = self.router.resolve(address)
        fields = dict(msg=transaction.id, to=path_text(address), result=resolution.result)
        if resolution.result == REJECTED:
            self.log.info("rcpt_refused", **fields, reason=resolution.reason)
            raise Reject(replies.NO_SUCH_USER)
        if resolution.result == REMOTE and not self.may_relay:
            self.log.warning("relay_denied", **fields, client=self.client.ip,
                             reason="client neither logged in nor in trusted_networks")
            raise Reject(replies.RELAY_DENIED)
        transaction.recipients.append((address, resolution))
        self.state = State.RCPT
        self.log.info("rcpt", **fields, mailboxes=resolution.mailboxes or None,
                      forward=[str(a) for a in resolution.forward] or None,
                      rule=resolution.rule or None)
        return _reply(replies.RECIPIENT_OK)

    @property
    def may_relay(self) -> bool:
        return self.user is not None or self.trusted

    def _parse_path(self, text: str, utf8: bool, postmaster: str | None = None):
        try:
            return parse_path(text, utf8=utf8, bare_postmaster_domain=postmaster)
        except AddressError as error:
            raise Reject(replies.BAD_ADDRESS_SYNTAX.fill(detail=str(error))) from None

    # ------------------------------------------------------------ DATA

    def _data(self, argument: str) -> Step:
        if argument.strip():
            raise Reject(replies.SYNTAX_ERROR.with_text("DATA takes no argument"))
        transaction = self.transaction
        if self.state is State.MAIL:                 # every RCPT was refused (RFC 2920)
            raise Reject(replies.NO_VALID_RECIPIENTS)
        destinations = Destinations.of([res for _, res in transaction.recipients])
        origin = {"session": self.id, "client": self.client.ip, "helo": self.helo,
                  "user": self.user}
        try:
            self._incoming = self.services.intake.begin(
                transaction.id, transaction.sender, destinations, self._received_header(),
                utf8=transaction.utf8, origin=origin)
        except OSError as error:
            self.log.error("data_failed", msg=transaction.id, reason=str(error))
            self._reset()
            raise Reject(replies.LOCAL_ERROR) from None
        self._receiver = wire.DataReceiver()
        self.state = State.DATA
        return _reply(replies.START_DATA)

    def feed_data(self, chunk: bytes) -> Step:
        """Message bytes as they arrive; the Step carries the final reply once
        CRLF.CRLF has been seen, and what followed it in `leftover`."""
        try:
            return self._feed_data(chunk)
        except Exception:                    # a bug mid-message: the stream cannot be resynced
            self.log.exception("internal_error", state=self.state.value)
            self.close("internal error")
            return self._say(_reply(replies.LOCAL_ERROR, action=Action.CLOSE))

    def _feed_data(self, chunk: bytes) -> Step:
        receiver = self._receiver
        content = receiver.feed(chunk)
        too_big = receiver.size > self.config.limits.max_message_size
        if content and not too_big and not receiver.overlong and not self._write_error:
            try:
                self._incoming.write(content, receiver.lines)
            except OSError as error:          # disk full: read on to the end, then 451
                self.log.error("data_failed", msg=self.transaction.id, reason=str(error))
                self._write_error = True
        if not receiver.done:
            return Step([])
        step = self._say(_reply(self._finish_message(too_big)))
        return Step(step.replies, step.action, receiver.leftover)

    def _finish_message(self, too_big: bool) -> Reply:
        transaction, incoming, receiver = self.transaction, self._incoming, self._receiver
        fields = dict(msg=transaction.id, size=receiver.size)
        try:
            if self._write_error:
                return replies.LOCAL_ERROR
            if too_big:
                self.log.info("data_refused", **fields, reason="message above max_message_size")
                return replies.MESSAGE_TOO_BIG
            if receiver.overlong:
                self.log.info("data_refused", **fields, reason="a line longer than 998 octets")
                return replies.DATA_LINE_TOO_LONG
            if incoming.hops > wire.MAX_HOPS:
                self.log.warning("data_refused", **fields, hops=incoming.hops,
                                 reason="too many Received headers: mail loop")
                return replies.TOO_MANY_HOPS
            verdict = self._run_filter(incoming)
            if verdict is not None:
                return verdict
            accepted = incoming.commit()
            self._incoming = None
        except Exception:
            self.log.exception("data_failed", **fields)
            return replies.LOCAL_ERROR
        finally:
            self._write_error = False
            self._reset()
        self.messages += 1
        self.log.info("accepted", **fields, sender=path_text(transaction.sender),
                      to=[str(a) for a, _ in transaction.recipients],
                      mailboxes=list(accepted.mailboxes) or None, queue=accepted.queue_id,
                      user=self.user, tls=self.tls.version if self.tls else None)
        return replies.ACCEPTED.fill(id=transaction.id)

    def _run_filter(self, incoming: Incoming) -> Reply | None:
        if not self.config.policy.filter_command or self.user is not None or self.trusted:
            return None
        transaction = self.transaction
        verdict = run_filter(self.config, incoming.readable_path(), {
            "MAILBOX_APPLIANCE_SENDER": str(transaction.sender or ""),
            "MAILBOX_APPLIANCE_RECIPIENTS": " ".join(str(a) for a, _ in transaction.recipients),
            "MAILBOX_APPLIANCE_CLIENT": self.client.ip})
        if verdict.reply is None:
            self.log.info("filter", msg=transaction.id, result="accept", detail=verdict.detail)
            return None
        self.log.info("data_refused", msg=transaction.id, reason=verdict.detail,
                      reply=verdict.reply.code)
        return verdict.reply

    def _received_header(self) -> bytes:
        """RFC 5321 4.4 trace line, with TLS and login facts (RFC 3848 / 6531 keywords)."""
        transaction = self.transaction
        base = "UTF8SMTP" if transaction.utf8 else ("ESMTP" if self.esmtp else "SMTP")
        protocol = base + ("S" if self.tls and self.esmtp else "") + \
            ("A" if self.user and self.esmtp else "")
        helo = _HELO_UNSAFE.sub("?", self.helo or "unknown")[:100]
        lines = [f"Received: from {helo} ([{self.client.ip}])"]
        if self.tls:
            lines.append(f"\t(using {self.tls.describe()})")
        lines.append(f"\tby {self.host} (mailbox_appliance) with {protocol} id {transaction.id}")
        date = email.utils.format_datetime(email.utils.localtime())
        if len(transaction.recipients) == 1:
            lines.append(f"\tfor {path_text(transaction.recipients[0][0])}; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters `KEY[=VALUE] ...` (RFC 5321 4.1.2) -> {KEY: value}."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key) or (eq and not value):
            raise Reject(replies.SYNTAX_ERROR.with_text(f"Bad parameter {item[:40]!r}"))
        key = key.upper()
        if key in params:
            raise Reject(replies.SYNTAX_ERROR.with_text(f"Parameter {key} given twice"))
        params[key] = value if eq else None
    return params


_ANY = frozenset({State.CONNECTED, State.READY, State.MAIL, State.RCPT})
_GREETED = frozenset({State.READY, State.MAIL, State.RCPT})

COMMANDS: dict[str, Command] = {
    "EHLO": Command(_ANY, SmtpSession._ehlo, ""),
    "HELO": Command(_ANY, SmtpSession._helo, ""),
    "MAIL": Command(frozenset({State.READY}), SmtpSession._mail,
                    "send EHLO first, and only one MAIL per transaction"),
    "RCPT": Command(frozenset({State.MAIL, State.RCPT}), SmtpSession._rcpt, "need MAIL first"),
    "DATA": Command(frozenset({State.MAIL, State.RCPT}), SmtpSession._data,
                    "need MAIL and RCPT first"),
    "RSET": Command(_ANY, SmtpSession._rset, ""),
    "NOOP": Command(_ANY, SmtpSession._noop, ""),
    "QUIT": Command(_ANY, SmtpSession._quit, ""),
    "HELP": Command(_ANY, SmtpSession._help, ""),
    "VRFY": Command(_ANY, SmtpSession._vrfy, ""),
    "STARTTLS": Command(frozenset({State.READY}), SmtpSession._starttls,
                        "send EHLO first, and not inside a mail transaction"),
    "AUTH": Command(frozenset({State.READY}), SmtpSession._auth_command,
                    "send EHLO first, and not inside a mail transaction"),
}
