"""The SMTP engine (RFC 5321 + ESMTP extensions): a state machine fed command
lines and DATA chunks, answering with replies and, rarely, an action.

No sockets inside: the listener reads bytes, feeds them here, writes the
replies back and performs the action (start TLS, close). The engine is not
free of I/O or waiting, though. A command may
- wait up to the in-flow delay (checks.inflow.InFlow.max_delay, 1 s) at
  MAIL while the outbound queue's backlog is over its limit,
- wait for a password-check slot and spend ~25 ms of CPU in scrypt at AUTH,
- write the message through the intake as DATA arrives (a file in the first
  Maildir's or the queue's tmp/), and at the end of DATA fsync it into
  every Maildir and the queue before the 250 (store.intake),
- run [policy] filter_command as a subprocess, for up to filter_timeout, at
  the end of a stranger's DATA,
- read the clock for message ids and for the Received: header's date.
Its events go to the EventLog it is given (tests pass one of their own).

The session lives as long as the connection (peer, TLS, login); the
Transaction (transaction.py) lives from MAIL to the end of DATA and owns the
DATA state. It is dropped whole on RSET, EHLO/HELO, STARTTLS, after each
message and on abort (`_end_transaction`); a SASL exchange (sasl.py) ends
in one place too (`_end_auth`).

Extensions: SIZE (RFC 1870), PIPELINING (2920), 8BITMIME (6152),
ENHANCEDSTATUSCODES (2034/3463), STARTTLS (3207), AUTH PLAIN LOGIN (4954),
SMTPUTF8 (6531).

Abuse (as Postfix's smtpd): errors and refusals are counted against an error
budget (session.engine.ErrorBudget); a stranger (neither trusted nor logged
in) past the soft limit gets every reply delayed by [limits] error_sleep (the
Step's delay: the handler waits), and one who talks before the greeting on
port 25 or pipelines past a command that must end a group (RFC 2920 3.1) is
refused with 554 5.5.0 and disconnected.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..checks import trust
from ..checks.filter import run_filter
from ..checks.trust import is_loopback
from ..config.router import REJECTED, REMOTE
from ..config.tls import TlsInfo
from ..core import passwords, replies, wire
from ..core.addresses import Address, AddressError, parse_path
from ..core.errors import Reject
from ..core.replies import Reply
from ..log.events import EventLog
from ..outbound.signing import rewrite_forwards, sign_incoming
from ..outbound.srsaddress import SRS_RULE, resolve_bounce
from ..session.engine import HARD_ERROR_LIMIT, Action, ClientInfo, SessionBasics, Step
from ..session.runtime import Runtime, Services
from ..store.intake import path_text
from .sasl import MECHANISMS, Cancelled, Credentials, SaslExchange
from .screening import StrangerScreening
from .transaction import Transaction

MAX_BAD_COMMANDS = HARD_ERROR_LIMIT    # then 421 and close, as Postfix's smtpd_hard_error_limit
# replies that count towards it: syntax and sequence errors, and refused
# recipients (so an address list cannot be probed without end), as Postfix counts.
# Other refusals (452, 530, 552 ...) count only past the overshoot limit.
CLIENT_ERRORS = frozenset({500, 501, 502, 503, 504, 550, 553, 554, 555})
# RFC 2920 3.1: these end a pipelined group; a client must wait for their reply
# (QUIT too, but nothing after it matters). Postfix flags the same ones.
LAST_IN_GROUP = frozenset({"EHLO", "HELO", "DATA", "NOOP", "VRFY", "EXPN", "TURN"})
# commands that do nothing for the mail, limited by the error budget (Postfix's list)
JUNK_COMMANDS = frozenset({"EHLO", "HELO", "RSET", "NOOP", "VRFY"})
HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"})
NOT_IMPLEMENTED_VERBS = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "BDAT", "SEND", "SOML",
                                   "SAML"})
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.:\[\]_-]")


class State(enum.Enum):
    CONNECTED = "connected"       # greeted; no EHLO/HELO yet
    READY = "ready"               # EHLO/HELO done; no transaction
    MAIL = "mail"                 # MAIL FROM accepted
    RCPT = "rcpt"                 # at least one RCPT TO accepted
    DATA = "data"                 # receiving the message
    AUTH = "auth"                 # inside a SASL exchange
    CLOSED = "closed"


@dataclass(frozen=True)
class Command:
    allowed: frozenset            # states in which the verb may be used
    run: Callable                 # SmtpSession method: (session, argument) -> Step
    refusal: str                  # what 503 says when used in another state


def _reply(*items: Reply, action: Action = Action.NONE) -> Step:
    return Step(list(items), action)


class SmtpSession(SessionBasics):
    component = "smtp"
    watches_pipelining = True          # RFC 2920: input before our answer, where it may not be

    def __init__(self, runtime: Runtime, services: Services, client: ClientInfo,
                 log: EventLog | None = None, session_id: str | None = None):
        super().__init__(runtime, services, client, log, session_id)
        self.state = State.CONNECTED
        self.helo: str | None = None
        self.esmtp = False
        self.user: str | None = None                # the mailbox logged in as
        self.trusted = trust.is_trusted(self.config, client.ip)
        self.transaction: Transaction | None = None
        self.messages = 0
        self.screening = StrangerScreening(self)    # DNSBL, SPF, ... for strangers only
        self._auth: SaslExchange | None = None      # set in State.AUTH only

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

    @property
    def idle(self) -> bool:
        return self.state in (State.CONNECTED, State.READY, State.CLOSED)

    @property
    def stranger(self) -> bool:
        """Neither in trusted_networks nor logged in: the client the abuse rules are for."""
        return not self.trusted and self.user is None

    @property
    def greet_pause(self) -> float:
        """Postfix's pregreet test: a stranger on port 25 must wait for the 220."""
        if self.client.listener == "smtp" and not self.trusted:
            return self.config.limits.greet_pause
        return 0.0

    # ------------------------------------------------------------ events

    def greeting(self, early: bytes = b"") -> Step:
        """The 220, or a 554 for a client that talked first (`early`: what it sent
        before the greeting; only spam engines do not wait for it)."""
        self.log.info("connect", client=f"{self.client.ip}:{self.client.port}",
                      listener=self.client.listener,
                      tls=self.tls.version if self.tls else None,
                      trusted=self.trusted or None)
        if early:
            self.log.warning("pregreet", client=self.client.ip,
                             input=early[:100].decode("utf-8", "surrogateescape"))
            self.close("talked before the greeting")
            return self._say(_reply(replies.PROTOCOL_SYNC, action=Action.CLOSE))
        return self._say(_reply(replies.GREETING.fill(host=self.host)))

    def tls_started(self, info: TlsInfo) -> None:
        """RFC 3207 4.2: forget everything learnt before the handshake."""
        self._end_transaction()
        self.tls = info
        self.state = State.CONNECTED
        self.helo = None
        self.esmtp = False
        self.user = None
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
        self._end_auth()
        return self._tarpit(self._error(replies.LINE_TOO_LONG))

    def close(self, reason: str = "client closed") -> None:
        """The connection is gone or going: drop any half-received message."""
        if self.state is State.CLOSED:
            return
        self._end_auth()
        aborted = self._end_transaction()
        self.state = State.CLOSED
        self.refusal_log.summarise()
        self.log.info("disconnect", reason=reason, messages=self.messages,
                      aborted_data=aborted or None)

    # ------------------------------------------------------------ commands

    def feed_line(self, line: bytes, more_input: bool = False) -> Step:
        """One command line (with its CRLF or LF); `more_input`: the client had
        sent more before this line was answered."""
        try:
            step = self._feed_line(line, more_input)
        except Exception:                    # a bug: say 451, keep the session usable
            self.log.exception("internal_error", state=self.state.value)
            self._end_auth()
            self._end_transaction()
            # counted: a client that can trigger a bug must not do it forever
            step = self._error(replies.LOCAL_ERROR)
        return self._tarpit(step)

    def _tarpit(self, step: Step) -> Step:
        """Postfix's smtpd_error_sleep_time: past the soft error limit every reply to a
        stranger waits, so that probing addresses or guessing costs time."""
        if step.replies and self.budget.past_soft_limit and self.stranger:
            return step._replace(delay=self.config.limits.error_sleep)
        return step

    def _feed_line(self, line: bytes, more_input: bool) -> Step:
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
            return self._answer(self._auth_step(decoded))
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
        if more_input and self.stranger and (verb in LAST_IN_GROUP or not self.esmtp):
            return self._out_of_sync(verb)
        if self.state not in command.allowed:
            return self._error(replies.BAD_SEQUENCE.fill(detail=command.refusal))
        try:
            step = command.run(self, argument)
        except Reject as reject:             # the one place a refusal becomes a reply
            step = Step([reject.reply])
        step = self._answer(step)
        if verb in JUNK_COMMANDS and step.action is Action.NONE and \
                self.budget.junk_command(self.services.connections.stressed):
            return self._too_many_errors(step.replies)
        return step

    def _out_of_sync(self, verb: str) -> Step:
        """RFC 2920 3.1: the client sent more before the reply to a command that must
        end a group (any command, before EHLO or after HELO). Bulk spam engines do;
        real clients do not. Refused as Postfix >= 3.9 does (smtpd_forbid_unauth_pipelining)."""
        self.log.warning("improper_pipelining", after=verb, client=self.client.ip)
        self.close("improper pipelining")
        return self._say(_reply(replies.PROTOCOL_SYNC, action=Action.CLOSE))

    def _answer(self, step: Step) -> Step:
        """A command's step, with a client error counted against the budget, and
        any other refusal counted past the overshoot limit."""
        if any(reply.code in CLIENT_ERRORS for reply in step.replies):
            spent = self.budget.error()
        elif any(reply.code >= 400 for reply in step.replies):
            spent = self.budget.refusal()
        else:
            spent = False
        return self._too_many_errors(step.replies) if spent else self._say(step)

    def _error(self, *answer: Reply) -> Step:
        """A client error: counted, and after too many the connection is closed."""
        if self.budget.error():
            return self._too_many_errors(list(answer))
        return self._say(_reply(*answer))

    def _too_many_errors(self, answer: list) -> Step:
        self.log.warning("too_many_errors", count=self.budget.errors,
                         refusals=self.budget.refusals or None)
        self.close("too many errors")
        return self._say(_reply(*answer, replies.TOO_MANY_ERRORS.fill(host=self.host),
                                action=Action.CLOSE))

    def _masked(self, text: bytes) -> str:
        """The line for the debug log, with SASL secrets replaced by ****."""
        if self.state is State.AUTH:
            return "****"
        words = text.decode("utf-8", "replace").split()
        if words and words[0].upper() == "AUTH":
            return " ".join(words[:2]) + (" ****" if len(words) > 2 else "")
        return text.decode("utf-8", "replace")

    def _end_transaction(self) -> bool:
        """Drop the transaction whole: RSET, EHLO/HELO, STARTTLS, the end of each
        message, an abort. A message begun and not committed is discarded here
        and nowhere else; returns True when there was one."""
        transaction, self.transaction = self.transaction, None
        if self.state in (State.MAIL, State.RCPT, State.DATA):
            self.state = State.READY
        return transaction is not None and transaction.discard()

    # ------------------------------------------------------------ EHLO / HELO

    def _ehlo(self, argument: str) -> Step:
        return self._hello(argument, esmtp=True)

    def _helo(self, argument: str) -> Step:
        return self._hello(argument, esmtp=False)

    def _hello(self, argument: str, esmtp: bool) -> Step:
        name = argument.strip()
        if not name or " " in name:
            raise Reject(replies.HELLO_SYNTAX.fill(verb="EHLO" if esmtp else "HELO"))
        self._end_transaction()
        self.state = State.READY
        self.helo = name
        self.esmtp = esmtp
        self.log.info("helo", name=name, esmtp=esmtp)
        if not esmtp:
            return _reply(replies.HELO_OK.fill(host=self.host))
        extensions = ["PIPELINING", f"SIZE {self.config.limits.max_message_size}", "8BITMIME",
                      "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.tls_offered:
            extensions.append("STARTTLS")
        if self.auth_allowed and self.user is None:
            extensions.append("AUTH " + " ".join(MECHANISMS))
        extensions.append("HELP")
        return _reply(replies.EHLO_OK.fill(host=self.host, name=_HELO_UNSAFE.sub("?", name),
                                           ip=self.client.ip, extensions="\n".join(extensions)))

    # ------------------------------------------------------------ simple commands

    def _noop(self, argument: str) -> Step:
        return _reply(replies.OK)

    def _rset(self, argument: str) -> Step:
        if argument.strip():
            raise Reject(replies.TAKES_NO_ARGUMENT.fill(verb="RSET"))
        self._end_transaction()
        return _reply(replies.RESET_OK)

    def _quit(self, argument: str) -> Step:
        self.close("quit")
        return _reply(replies.BYE, action=Action.CLOSE)

    def _help(self, argument: str) -> Step:
        return _reply(replies.HELP)

    def _vrfy(self, argument: str) -> Step:
        if not argument.strip():
            raise Reject(replies.VRFY_SYNTAX)
        return _reply(replies.CANNOT_VRFY)          # never reveals which mailboxes exist

    # ------------------------------------------------------------ STARTTLS

    def _starttls(self, argument: str) -> Step:
        if self.tls is not None:
            raise Reject(replies.BAD_SEQUENCE.fill(detail="TLS is already active"))
        if self.runtime.tls is None:
            raise Reject(replies.NOT_IMPLEMENTED)
        if argument.strip():
            raise Reject(replies.TAKES_NO_ARGUMENT.fill(verb="STARTTLS"))
        return _reply(replies.READY_FOR_TLS, action=Action.START_TLS)

    # ------------------------------------------------------------ AUTH (RFC 4954)

    def _auth_command(self, argument: str) -> Step:
        if self.user is not None:
            raise Reject(replies.BAD_SEQUENCE.fill(detail="already authenticated"))
        mechanism, _, initial = argument.strip().partition(" ")
        mechanism = mechanism.upper()
        if not mechanism:
            raise Reject(replies.AUTH_SYNTAX)
        if not self.auth_allowed:
            raise self._refuse(replies.ENCRYPTION_REQUIRED, "auth_refused",
                                reason="no TLS and plaintext_auth forbids it")
        if mechanism not in MECHANISMS:
            raise Reject(replies.UNKNOWN_MECHANISM)
        if self.services.auth.locked(self.config, self.client.ip):
            raise self._refuse(replies.AUTH_LOCKED, "auth_locked", level="warning",
                                mechanism=mechanism)
        self.state = State.AUTH
        self._auth = SaslExchange(mechanism)
        if initial.strip():
            return self._auth_step(initial.strip())
        return _reply(replies.AUTH_CHALLENGE.fill(challenge=self._auth.first_challenge()))

    def _auth_step(self, line: str) -> Step:
        """One response of the exchange; anything but another challenge ends it."""
        answer = self._auth_answer(line)
        if answer.code != replies.AUTH_CHALLENGE.code:
            self._end_auth()
        return _reply(answer)

    def _auth_answer(self, line: str) -> Reply:
        exchange = self._auth
        if exchange is None:
            raise RuntimeError("no SASL exchange in progress")
        try:
            outcome = exchange.respond(line)
        except Cancelled:
            return replies.AUTH_CANCELLED
        except passwords.SaslError as error:
            return replies.AUTH_BAD_RESPONSE.fill(detail=str(error))
        if isinstance(outcome, Credentials):
            return self._login(exchange.mechanism, outcome)
        return replies.AUTH_CHALLENGE.fill(challenge=outcome)

    def _end_auth(self) -> None:
        """The one way out of a SASL exchange, whatever ended it: success,
        failure, "*", undecodable base64, an overlong line, an abort."""
        self._auth = None
        if self.state is State.AUTH:
            self.state = State.READY

    def _login(self, mechanism: str, credentials: Credentials) -> Reply:
        name, secret = credentials
        result = self.services.auth.login(self.router, self.client.ip, name, secret)
        if result.mailbox is None:
            refusal = replies.AUTH_LOCKED if result.locked else replies.AUTH_FAILED
            self.refusal_log.note(refusal, "auth_failed", "warning", mechanism=mechanism,
                              user=name[:64], reason=result.reason, client=self.client.ip)
            return refusal
        self.user = result.mailbox
        self.log.info("auth", mechanism=mechanism, user=self.user)
        return replies.AUTH_OK

    # ------------------------------------------------------------ MAIL / RCPT

    def _mail(self, argument: str) -> Step:
        if argument[:5].upper() != "FROM:":
            raise Reject(replies.MAIL_SYNTAX)
        if self.client.listener != "smtp" and self.user is None:
            needs_tls = not self.auth_allowed and self.tls_offered
            raise self._refuse(replies.TLS_REQUIRED if needs_tls else replies.AUTH_REQUIRED,
                                "mail_refused", reason="submission needs a login first")
        sender, params = self._parse_path(argument[5:], utf8=True,
                                          bare_domain=self._own_programs_domain())
        options = _parse_params(params)
        utf8 = "SMTPUTF8" in options
        if utf8 and options["SMTPUTF8"] is not None:
            raise Reject(replies.SMTPUTF8_SYNTAX)
        if not utf8 and not _path_part(argument[5:], params).isascii():
            # RFC 6531: a non-ASCII address, an international domain too, needs
            # SMTPUTF8 (553 5.6.7); with it the domain is used as its A-labels.
            raise Reject(replies.NEEDS_SMTPUTF8)
        declared = None
        for key, value in options.items():
            if key == "SIZE":
                if value is None or not wire.is_number(value):
                    raise Reject(replies.SIZE_SYNTAX)
                declared = int(value)
                if declared > self.config.limits.max_message_size:
                    raise self._refuse(replies.MESSAGE_TOO_BIG, "mail_refused",
                                        sender=path_text(sender), size=declared,
                                        reason="declared SIZE above max_message_size")
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=f"BODY={value}"))
            elif key not in ("SMTPUTF8", "AUTH"):   # AUTH=<...> is allowed and ignored
                raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=key))
        if self.user is not None and sender is not None and \
                not self.router.owns(self.user, sender):
            raise self._refuse(replies.SENDER_NOT_OWNED.fill(user=self.user), "mail_refused",
                                level="warning", sender=path_text(sender), user=self.user,
                                reason="sender address does not route to the user's mailbox")
        waited = self.services.flow.admit()         # the queue lags: slow this client down
        if waited > 0.05:
            self.log.debug("in_flow_delay", seconds=round(waited, 2))
        transaction = Transaction(sender=sender, utf8=utf8)
        self.screening.at_mail(transaction)          # SPF: refused before a transaction opens
        self.transaction = transaction
        self.state = State.MAIL
        self.log.debug("mail", msg=self.transaction.id, sender=path_text(sender),
                       size=declared, utf8=utf8 or None)
        return _reply(replies.SENDER_OK)

    def _rcpt(self, argument: str) -> Step:
        if argument[:3].upper() != "TO:":
            raise Reject(replies.RCPT_SYNTAX)
        transaction = self._current()
        if not transaction.utf8 and not argument.isascii():
            raise Reject(replies.NEEDS_SMTPUTF8)     # RFC 6531, as in MAIL
        address, params = self._parse_path(argument[3:], utf8=True,
                                           postmaster=self.router.primary_domain,
                                           bare_domain=self._own_programs_domain())
        if address is None:
            raise Reject(replies.BAD_ADDRESS_SYNTAX.fill(detail="empty recipient"))
        self.screening.at_rcpt_client(transaction)
        if params:
            raise Reject(replies.UNSUPPORTED_PARAMETER.fill(detail=params.split(" ")[0]))
        if len(transaction.recipients) >= self.config.limits.max_recipients:
            raise self._refuse(replies.TOO_MANY_RECIPIENTS, "rcpt_refused", msg=transaction.id,
                                to=path_text(address), reason="max_recipients reached")
        # a bounce to a forward's SRS sender: reversed, or refused; else the router
        resolution = resolve_bounce(self.router, address) or self.router.resolve(address)
        fields = dict(msg=transaction.id, to=path_text(address), result=resolution.result)
        if resolution.result == REJECTED:
            raise self._refuse(replies.NO_SUCH_USER, "rcpt_refused", **fields,
                                reason=resolution.reason)
        # a valid SRS address is relayed for anyone: it is mail coming back (srsaddress)
        if resolution.result == REMOTE and not self.may_relay and resolution.rule != SRS_RULE:
            raise self._refuse(replies.RELAY_DENIED, "relay_denied", level="warning", **fields,
                                client=self.client.ip,
                                reason="client neither logged in nor in trusted_networks")
        if resolution.result != REMOTE:
            self.screening.at_rcpt(transaction, str(address))
        transaction.recipients.append((address, resolution))
        self.state = State.RCPT
        self.log.info("rcpt", **fields, mailboxes=resolution.mailboxes or None,
                      forward=[str(a) for a in resolution.forward] or None,
                      rule=resolution.rule or None)
        return _reply(replies.RECIPIENT_OK)

    @property
    def may_relay(self) -> bool:
        return self.user is not None or self.trusted

    def _current(self) -> Transaction:
        """The transaction of a command the table allows only inside one."""
        if self.transaction is None:
            raise RuntimeError(f"no transaction in state {self.state.value}")
        return self.transaction

    def _own_programs_domain(self) -> str | None:
        """A bare name ("root", from cron's sendmail over SMTP) gets the first local
        domain when it comes from this machine, the LAN or a logged-in user, as
        Postfix appends @$myorigin; from a stranger it stays a syntax error."""
        if self.trusted or self.user is not None or is_loopback(self.client.ip):
            return self.router.primary_domain
        return None

    def _parse_path(self, text: str, utf8: bool, postmaster: str | None = None,
                    bare_domain: str | None = None) -> tuple[Address | None, str]:
        try:
            return parse_path(text, utf8=utf8, bare_postmaster_domain=postmaster,
                              bare_domain=bare_domain)
        except AddressError as error:
            raise Reject(replies.BAD_ADDRESS_SYNTAX.fill(detail=str(error))) from None

    # ------------------------------------------------------------ DATA

    def _data(self, argument: str) -> Step:
        if argument.strip():
            raise Reject(replies.TAKES_NO_ARGUMENT.fill(verb="DATA"))
        transaction = self._current()
        if self.state is State.MAIL:                 # every RCPT was refused (RFC 2920)
            raise Reject(replies.NO_VALID_RECIPIENTS)
        header = transaction.received_header(
            host=self.host, client_ip=self.client.ip, esmtp=self.esmtp, tls=self.tls,
            user=self.user, helo=_HELO_UNSAFE.sub("?", self.helo or "unknown")[:100])
        origin = {"session": self.id, "client": self.client.ip, "helo": self.helo,
                  "user": self.user}
        try:
            transaction.begin_data(self.services.intake, header, origin)
        except OSError as error:
            self.log.error("data_failed", msg=transaction.id, reason=str(error))
            self._end_transaction()
            raise Reject(replies.LOCAL_ERROR) from None
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
        if self.state is not State.DATA:
            raise RuntimeError("feed_data outside DATA; use feed_line")
        transaction = self._current()
        failed = transaction.take(chunk, self.config.limits.max_message_size)
        if failed is not None:
            self.log.error("data_failed", msg=transaction.id, reason=str(failed))
        if not transaction.receiver.done:
            return Step([])
        try:
            reply = self._finish_message(transaction)
        finally:
            self._end_transaction()          # after each message, whatever became of it
        step = self._answer(Step([reply], leftover=transaction.receiver.leftover))
        return self._tarpit(step)

    def _finish_message(self, transaction: Transaction) -> Reply:
        receiver = transaction.receiver
        fields = dict(msg=transaction.id, size=receiver.size)
        try:
            if transaction.write_error is not None:
                return replies.LOCAL_ERROR
            if transaction.too_big(self.config.limits.max_message_size):
                self.log.info("data_refused", **fields, reason="message above max_message_size")
                return replies.MESSAGE_TOO_BIG
            if receiver.overlong:
                self.log.info("data_refused", **fields, reason="a line longer than 998 octets")
                return replies.DATA_LINE_TOO_LONG
            if transaction.message.hops > wire.MAX_HOPS:
                self.log.warning("data_refused", **fields, hops=transaction.message.hops,
                                 reason="too many Received headers: mail loop")
                return replies.TOO_MANY_HOPS
            outcome = self.screening.after_data(transaction)
            if outcome is not None and outcome.reply is not None:
                self.log.info("data_refused", **fields, reply=outcome.reply.code,
                              reason="; ".join(f"{r.check}: {r.reason}" for r in outcome.results
                                               if r.reply is not None))
                return outcome.reply
            verdict = self._run_filter(transaction)
            if verdict is not None:
                return verdict
            log = self.log.bind(msg=transaction.id)
            if self.may_relay:               # the household's own mail; never a stranger's
                sign_incoming(transaction.message, self.config, log)
            rewrite_forwards(transaction.message, self.config, self.host, log)
            accepted = transaction.commit(junk=outcome is not None and outcome.junk)
        except Exception:
            self.log.exception("data_failed", **fields)
            return replies.LOCAL_ERROR
        self.messages += 1
        self.budget.forgive()
        self.log.info("accepted", **fields, sender=path_text(transaction.sender),
                      to=[str(a) for a, _ in transaction.recipients],
                      mailboxes=list(accepted.mailboxes) or None,
                      queue=",".join(accepted.queue_ids) or None,
                      folder="Junk" if accepted.junk else None,
                      user=self.user, tls=self.tls.version if self.tls else None)
        return replies.ACCEPTED.fill(id=transaction.id)

    def _run_filter(self, transaction: Transaction) -> Reply | None:
        """[policy] filter_command, for strangers only: a subprocess, up to filter_timeout."""
        if not self.config.policy.filter_command or self.user is not None or self.trusted:
            return None
        verdict = run_filter(self.config, transaction.message.readable_path(), {
            "MAILBOX_APPLIANCE_SENDER": str(transaction.sender or ""),
            "MAILBOX_APPLIANCE_RECIPIENTS": " ".join(str(a) for a, _ in transaction.recipients),
            "MAILBOX_APPLIANCE_CLIENT": self.client.ip})
        if verdict.reply is None:
            self.log.info("filter", msg=transaction.id, result="accept", detail=verdict.detail)
            return None
        self.log.info("data_refused", msg=transaction.id, reason=verdict.detail,
                      reply=verdict.reply.code)
        return verdict.reply


def _path_part(text: str, params: str) -> str:
    """The path of a MAIL/RCPT argument, without the parameters parse_path found."""
    text = text.rstrip(" ")
    return text[:len(text) - len(params)]


def _parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters `KEY[=VALUE] ...` (RFC 5321 4.1.2) -> {KEY: value}."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key) or (eq and not value):
            raise Reject(replies.BAD_PARAMETER.fill(item=repr(item[:40])))
        key = key.upper()
        if key in params:
            raise Reject(replies.PARAMETER_TWICE.fill(key=key))
        params[key] = value if eq else None
    return params


_ANY = frozenset({State.CONNECTED, State.READY, State.MAIL, State.RCPT})

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
