"""The SMTP client towards one next hop: connect, implicit TLS or STARTTLS,
log in, one transaction with a reply per recipient, and the per-thread
cache of open connections."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field

from ..config import tls
from ..core import wire
from ..core.errors import TemporaryFailure
from ..session.runtime import Runtime
from .nexthop import Hop

CONNECT_TIMEOUT = 30.0        # seconds to connect and get the greeting
COMMAND_TIMEOUT = 300.0       # RFC 5321 4.5.3.2: generous; a slow MX is not a dead one
SEND_CHUNK = 256 * 1024
CACHE_IDLE_SECONDS = 5.0      # an idle cached connection is closed after this
CACHE_MAX_USES = 100          # transactions per connection before a fresh one


@dataclass
class Outcome:
    """What one attempt did to each recipient address."""
    replies: dict[str, str] = field(default_factory=dict)     # address -> reply text
    relay: str = ""                   # host[ip]:port that answered
    tls: str | None = None
    idle: bool = False                # the session is between transactions: reusable


def _reply_text(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def _connect(runtime: Runtime, hop: Hop, address: str, implicit_tls: bool,
             outcome: Outcome) -> tuple[smtplib.SMTP, int, bytes]:
    """An smtplib client on a socket we opened to `address` (so TLS checks and
    SNI use the host's name, not the IP), and the greeting."""
    sock = socket.create_connection((address, hop.port), timeout=CONNECT_TIMEOUT)
    # Commands and replies are small: without this, Nagle's algorithm and the
    # peer's delayed ACK can hold a command back for 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if implicit_tls:
            sock = _client_context(hop, runtime.config.relay).wrap_socket(
                sock, server_hostname=hop.name)
            outcome.tls = sock.version()
        sock.settimeout(COMMAND_TIMEOUT)
        client = smtplib.SMTP(local_hostname=runtime.hostname, timeout=COMMAND_TIMEOUT)
        client.sock = sock
        client._host = hop.name              # what starttls() verifies and sends as SNI
        code, banner = client.getreply()
    except BaseException:
        sock.close()
        raise
    return client, code, banner


class ConnectionCache:
    """Open SMTP connections of one delivery thread, kept a few seconds after a
    transaction so the next message to the same host skips the connect, EHLO,
    STARTTLS and login (as Postfix's scache does)."""

    def __init__(self, idle: float = CACHE_IDLE_SECONDS, uses: int = CACHE_MAX_USES):
        self._idle = idle
        self._uses = uses
        self._open: dict[tuple, tuple[smtplib.SMTP, str | None, float, int]] = {}

    def take(self, key: tuple) -> tuple[smtplib.SMTP, str | None, int] | None:
        self.expire()
        entry = self._open.pop(key, None)
        return None if entry is None else (entry[0], entry[1], entry[3])

    def put(self, key: tuple, client: smtplib.SMTP, tls: str | None, uses: int) -> None:
        if uses >= self._uses:
            _quit(client)
            return
        old = self._open.pop(key, None)
        if old is not None:
            _quit(old[0])
        self._open[key] = (client, tls, time.monotonic(), uses)

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._open.items() if now - v[2] > self._idle]:
            _quit(self._open.pop(key)[0])

    def close(self) -> None:
        for client, *_ in self._open.values():
            _quit(client)
        self._open.clear()


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def transact(runtime: Runtime, hop: Hop, address: str, sender: str, recipients: list[str],
             message_path, utf8: bool, cache: ConnectionCache | None = None) -> Outcome:
    """Deliver to one address of one hop. Returns each recipient's reply; raises
    TemporaryFailure when the host could not be used at all (try the next one)."""
    relay = runtime.config.relay
    outcome = Outcome(relay=f"{hop.name}[{address}]:{hop.port}")
    key = (hop.kind, hop.name, address, hop.port)
    cached = cache.take(key) if cache is not None else None
    if cached is not None:
        client, outcome.tls, uses = cached
        try:
            _envelope_and_data(client, sender, recipients, message_path, utf8, outcome)
        except TemporaryFailure:
            _quit(client)
            raise
        except (OSError, smtplib.SMTPException):
            client.close()                     # went stale while idle: start afresh
            cached = None
            outcome = Outcome(relay=outcome.relay)
        else:
            _reuse_or_quit(cache, key, client, outcome, uses + 1)
            return outcome
    client = _open_session(runtime, hop, address, relay, outcome)
    try:
        _envelope_and_data(client, sender, recipients, message_path, utf8, outcome)
    except TemporaryFailure:
        _quit(client)
        raise
    except (OSError, smtplib.SMTPException) as error:
        client.close()
        if not outcome.replies:
            raise TemporaryFailure(f"{outcome.relay}: {error or type(error).__name__}") from None
        # Recipients were accepted but the message did not get through: retry them.
        for rcpt, reply in outcome.replies.items():
            if reply.startswith("2"):
                outcome.replies[rcpt] = f"451 4.4.2 connection to {outcome.relay} lost: {error}"
        return outcome
    _reuse_or_quit(cache, key, client, outcome, 1)
    return outcome


def _reuse_or_quit(cache: ConnectionCache | None, key: tuple, client: smtplib.SMTP,
                   outcome: Outcome, uses: int) -> None:
    """Keep a connection that is ready for the next MAIL FROM; close the others."""
    if cache is not None and outcome.idle:
        cache.put(key, client, outcome.tls, uses)
    else:
        _quit(client)


def _open_session(runtime: Runtime, hop: Hop, address: str, relay, outcome: Outcome):
    """Connect, greet, EHLO, STARTTLS and log in: a client ready for MAIL FROM."""
    implicit = hop.kind == "smarthost" and relay.smarthost_tls == "tls"
    try:
        client, code, banner = _connect(runtime, hop, address, implicit, outcome)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as error:
        raise TemporaryFailure(f"cannot connect to {outcome.relay}: {error}") from None
    try:
        if code != 220:
            raise TemporaryFailure(f"{outcome.relay} greeted with {_reply_text(code, banner)}")
        _hello(client, outcome)
        if not implicit:
            _maybe_starttls(client, hop, relay, outcome)
        if hop.kind == "smarthost" and relay.smarthost_user:
            _login(client, relay, outcome)
    except (OSError, smtplib.SMTPException) as error:
        _quit(client)
        raise TemporaryFailure(f"{outcome.relay}: {error or type(error).__name__}") from None
    except TemporaryFailure:
        _quit(client)
        raise
    return client


def _login(client: smtplib.SMTP, relay, outcome: Outcome) -> None:
    if not client.has_extn("auth"):
        raise TemporaryFailure(f"{outcome.relay} offers no AUTH, but [relay] smarthost_user "
                               "is set")
    try:
        client.login(relay.smarthost_user, relay.smarthost_password)
    except smtplib.SMTPAuthenticationError as error:
        raise TemporaryFailure(f"{outcome.relay} refused our login as {relay.smarthost_user}: "
                               f"{_reply_text(error.smtp_code, error.smtp_error)}") from None
    except smtplib.SMTPException as error:
        raise TemporaryFailure(f"login at {outcome.relay} failed: {error}") from None


def _client_context(hop: Hop, relay) -> ssl.SSLContext:
    if hop.kind == "smarthost":
        return tls.verifying_client_context(relay.smarthost_ca_file or None)
    return tls.opportunistic_client_context()


def _hello(client: smtplib.SMTP, outcome: Outcome) -> None:
    code, message = client.ehlo()
    if code != 250:
        code, message = client.helo()
        if code != 250:
            raise TemporaryFailure(f"{outcome.relay} refused HELO: {_reply_text(code, message)}")


def _maybe_starttls(client: smtplib.SMTP, hop: Hop, relay, outcome: Outcome) -> None:
    required = hop.kind == "smarthost" and relay.smarthost_tls == "starttls"
    if not client.has_extn("starttls"):
        if required:
            raise TemporaryFailure(f"{outcome.relay} does not offer STARTTLS "
                                   "([relay] smarthost_tls = starttls requires it)")
        return
    try:
        code, message = client.starttls(context=_client_context(hop, relay))
    except (ssl.SSLError, ssl.CertificateError) as error:
        raise TemporaryFailure(f"TLS with {outcome.relay} failed: {error}") from None
    if code != 220:
        if required:
            raise TemporaryFailure(f"{outcome.relay} refused STARTTLS: {_reply_text(code, message)}")
        return
    outcome.tls = client.sock.version()
    _hello(client, outcome)


def _envelope_and_data(client: smtplib.SMTP, sender: str, recipients: list[str], message_path,
                       utf8: bool, outcome: Outcome) -> None:
    """One transaction. Sets outcome.idle when it ended with the session ready
    for another MAIL FROM (never while a transaction may still be open)."""
    size = os.path.getsize(message_path)
    limit = client.esmtp_features.get("size", "") if client.has_extn("size") else ""
    if wire.is_number(limit) and int(limit) and size > int(limit):
        for rcpt in recipients:
            outcome.replies[rcpt] = (f"552 5.3.4 message of {size} octets is larger than the "
                                     f"{limit} {outcome.relay} accepts")
        outcome.idle = True
        return
    options = f" SIZE={size}" if client.has_extn("size") else ""
    if client.has_extn("8bitmime"):
        options += " BODY=8BITMIME"
    # An address that is not ASCII needs SMTPUTF8 whatever the client declared
    # (an alias can forward to one).
    utf8 = utf8 or not (sender.isascii() and all(r.isascii() for r in recipients))
    if utf8:
        if not client.has_extn("smtputf8"):             # RFC 6531 3.4: bounce, never downgrade
            for rcpt in recipients:
                outcome.replies[rcpt] = f"553 5.6.7 {outcome.relay} does not support SMTPUTF8"
            outcome.idle = True
            return
        options += " SMTPUTF8"
        client.command_encoding = "utf-8"
    code, message = client.docmd(f"MAIL FROM:<{sender}>{options}")
    if code != 250:
        reply = _reply_text(code, message)
        if code >= 500:
            for rcpt in recipients:
                outcome.replies[rcpt] = reply
            outcome.idle = True
            return
        raise TemporaryFailure(f"{outcome.relay} refused MAIL FROM: {reply}")
    accepted = []
    for rcpt in recipients:
        code, message = client.docmd(f"RCPT TO:<{rcpt}>")
        outcome.replies[rcpt] = _reply_text(code, message)
        if code in (250, 251):
            accepted.append(rcpt)
    if not accepted:
        outcome.idle = client.docmd("RSET")[0] == 250
        return
    code, message = client.docmd("DATA")
    if code != 354:
        for rcpt in accepted:
            outcome.replies[rcpt] = _reply_text(code, message)
        outcome.idle = client.docmd("RSET")[0] == 250      # end the open transaction
        return
    encoder = wire.MessageEncoder()
    pending = []                      # small messages go out in one send, dot included
    with open(message_path, "rb") as source:
        while chunk := source.read(SEND_CHUNK):
            pending.append(encoder.feed(chunk))
            if len(pending) > 1:
                client.sock.sendall(b"".join(pending))
                pending = []
    pending.append(encoder.finish())
    client.sock.sendall(b"".join(pending))
    code, message = client.getreply()
    for rcpt in accepted:
        outcome.replies[rcpt] = _reply_text(code, message)
    outcome.idle = True
