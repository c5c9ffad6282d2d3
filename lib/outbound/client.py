"""The SMTP client towards one next hop: connect, implicit TLS or STARTTLS,
log in, one transaction with a result per recipient, and the per-thread
cache of open connections.

`transact` returns each recipient's result (the host's RemoteReply, or a
HostFailure when the connection was lost after the recipients were
accepted); it raises AttemptFailed when the host could not be used at all
(refused, timeout, TLS, a 421 greeting ...), so that the caller tries the
next one.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import tls
from ..config.schema import RelaySection
from ..core import wire
from ..session.runtime import Runtime
from .nexthop import Hop
from .results import AttemptFailed, FailureKind, HostFailure, RemoteReply, Result, where

CONNECT_TIMEOUT = 30.0        # seconds to connect and get the greeting
COMMAND_TIMEOUT = 300.0       # RFC 5321 4.5.3.2: generous; a slow MX is not a dead one
SEND_CHUNK = 256 * 1024
CACHE_IDLE_SECONDS = 5.0      # an idle cached connection is closed after this
CACHE_MAX_USES = 100          # transactions per connection before a fresh one


@dataclass
class Outcome:
    """What one attempt did to each recipient address."""
    relay: str                        # host[ip]:port that answered, for the log; "none"
    tls: str | None = None            # the TLS version ("TLSv1.3"); None: plain text
    verified: bool = False            # the certificate was checked against the hop's name
    results: dict[str, Result] = field(default_factory=dict)    # address -> result
    idle: bool = False                # the session is between transactions: reusable


class HopClient(smtplib.SMTP):
    """smtplib's client on a socket connected to one address of a hop.

    TLS (SNI and the certificate check) must use the hop's name while the TCP
    connection goes to an address we resolved; smtplib's starttls() takes the
    name from connect(), which would be the address, so `start_tls` does it."""

    def __init__(self, sock: socket.socket, local_hostname: str, tls_name: str):
        super().__init__(local_hostname=local_hostname, timeout=COMMAND_TIMEOUT)
        self.sock = sock
        self.tls_name = tls_name
        self.tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        self.tls_verified = isinstance(sock, ssl.SSLSocket) and _verifies(sock.context)
        self.transactions = 0         # completed on this connection, for the cache's limit

    def start_tls(self, context: ssl.SSLContext) -> RemoteReply:
        """STARTTLS (RFC 3207); on 220 the session is encrypted and knows
        nothing of what the server said before it (4.2): greet again."""
        reply = RemoteReply.parse(*self.docmd("STARTTLS"))
        if reply.code == 220:
            secured = context.wrap_socket(self.connected(), server_hostname=self.tls_name)
            self.sock = secured
            self.file = None          # smtplib reads replies through a file made from sock
            self.helo_resp = self.ehlo_resp = None
            self.esmtp_features = {}
            self.does_esmtp = False
            self.tls_version = secured.version()
            self.tls_verified = _verifies(context)
        return reply

    def command(self, line: str) -> RemoteReply:
        return RemoteReply.parse(*self.docmd(line))

    def send_raw(self, data: bytes) -> None:
        self.connected().sendall(data)

    def connected(self) -> socket.socket:
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        return self.sock


class ConnectionCache:
    """Open SMTP connections of one delivery thread, kept a few seconds after a
    transaction so the next message to the same host skips the connect, EHLO,
    STARTTLS and login (as Postfix's scache does)."""

    def __init__(self, idle: float = CACHE_IDLE_SECONDS, uses: int = CACHE_MAX_USES):
        self._idle = idle
        self._uses = uses
        self._open: dict[tuple, tuple[HopClient, float]] = {}

    def take(self, key: tuple) -> HopClient | None:
        self.expire()
        entry = self._open.pop(key, None)
        return None if entry is None else entry[0]

    def put(self, key: tuple, client: HopClient) -> None:
        if client.transactions >= self._uses:
            _quit(client)
            return
        old = self._open.pop(key, None)
        if old is not None:
            _quit(old[0])
        self._open[key] = (client, time.monotonic())

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._open.items() if now - v[1] > self._idle]:
            _quit(self._open.pop(key)[0])

    def close(self) -> None:
        for client, _ in self._open.values():
            _quit(client)
        self._open.clear()


def _verifies(context: ssl.SSLContext) -> bool:
    """Does a handshake with this context check the certificate and its name?
    The smarthost's does; MX hosts' does not (RFC 7435: see tls.py)."""
    return context.verify_mode != ssl.CERT_NONE and context.check_hostname


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except OSError:                   # smtplib.SMTPException is one too
        client.close()


# ---------------------------------------------------------------- one transaction

def transact(runtime: Runtime, hop: Hop, address: str, sender: str, recipients: list[str],
             message_path: Path, utf8: bool, cache: ConnectionCache | None = None) -> Outcome:
    """Deliver to one address of one hop: each recipient's result, or
    AttemptFailed when the host could not be used (try the next one)."""
    relay = f"{hop.name}[{address}]:{hop.port}"
    host = where(hop.name, address)
    size = os.path.getsize(message_path)
    key = (hop.kind, hop.name, address, hop.port)
    client = cache.take(key) if cache is not None else None
    if client is not None:
        outcome = Outcome(relay, client.tls_version, client.tls_verified)
        try:
            _transaction(client, host, sender, recipients, message_path, size, utf8, outcome)
        except AttemptFailed:
            _quit(client)
            raise
        except OSError:
            client.close()                     # went stale while idle: start afresh
        else:
            _keep_or_quit(cache, key, client, outcome)
            return outcome
    client = _open_session(runtime, hop, address, host)
    outcome = Outcome(relay, client.tls_version, client.tls_verified)
    try:
        _transaction(client, host, sender, recipients, message_path, size, utf8, outcome)
    except AttemptFailed:
        _quit(client)
        raise
    except OSError as error:
        client.close()
        if not outcome.results:
            raise AttemptFailed(_failure(error, host, f"connection to {host} failed")) from None
        # Recipients were accepted but the message did not get through: retry them.
        lost = HostFailure(FailureKind.DROPPED, _failure(
            error, host, f"connection to {host} lost before the message was accepted").description)
        for rcpt, result in outcome.results.items():
            if result.success:
                outcome.results[rcpt] = lost
        return outcome
    _keep_or_quit(cache, key, client, outcome)
    return outcome


def _keep_or_quit(cache: ConnectionCache | None, key: tuple, client: HopClient,
                  outcome: Outcome) -> None:
    """Keep a connection that is ready for the next MAIL FROM; close the others."""
    client.transactions += 1
    if cache is not None and outcome.idle:
        cache.put(key, client)
    else:
        _quit(client)


def _open_session(runtime: Runtime, hop: Hop, address: str, host: str) -> HopClient:
    """Connect, greet, EHLO, STARTTLS and log in: a client ready for MAIL FROM."""
    relay = runtime.config.relay
    implicit = hop.kind == "smarthost" and relay.smarthost_tls == "tls"
    try:
        sock = socket.create_connection((address, hop.port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise AttemptFailed(_failure(error, host, f"could not connect to {host}")) from None
    # Commands and replies are small: without this, Nagle's algorithm and the
    # peer's delayed ACK can hold a command back for 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = None
    try:
        if implicit:
            sock = _client_context(hop, relay).wrap_socket(sock, server_hostname=hop.name)
        sock.settimeout(COMMAND_TIMEOUT)
        client = HopClient(sock, runtime.hostname, hop.name)
        greeting = RemoteReply.parse(*client.getreply())
        if greeting.code != 220:
            raise AttemptFailed(HostFailure(FailureKind.REJECTED,
                                            f"{host} greeted us with {greeting.render()}"))
        _hello(client, host)
        if not implicit:
            _maybe_starttls(client, hop, relay, host)
        if hop.kind == "smarthost" and relay.smarthost_user:
            _login(client, relay, host)
        return client
    except AttemptFailed:
        if client is not None:
            _quit(client)
        sock.close()
        raise
    except BaseException as error:
        if client is not None:
            client.close()
        sock.close()
        if isinstance(error, OSError):
            raise AttemptFailed(_failure(error, host, f"connection to {host} failed")) from None
        raise


def _hello(client: HopClient, host: str) -> None:
    code, message = client.ehlo()
    if code != 250:
        code, message = client.helo()
        if code != 250:
            reply = RemoteReply.parse(code, message)
            raise AttemptFailed(HostFailure(FailureKind.REJECTED,
                                            f"{host} refused HELO: {reply.render()}"))


def _maybe_starttls(client: HopClient, hop: Hop, relay: RelaySection, host: str) -> None:
    required = hop.kind == "smarthost" and relay.smarthost_tls == "starttls"
    if not client.has_extn("starttls"):
        if required:
            raise AttemptFailed(HostFailure(
                FailureKind.REJECTED, f"{host} does not offer STARTTLS "
                                      "([relay] smarthost_tls = starttls requires it)"))
        return
    reply = client.start_tls(_client_context(hop, relay))
    if reply.code != 220:
        if required:
            raise AttemptFailed(HostFailure(FailureKind.REJECTED,
                                            f"{host} refused STARTTLS: {reply.render()}"))
        return
    _hello(client, host)


def _login(client: HopClient, relay: RelaySection, host: str) -> None:
    if not client.has_extn("auth"):
        raise AttemptFailed(HostFailure(
            FailureKind.REJECTED, f"{host} offers no AUTH, but [relay] smarthost_user is set"))
    try:
        client.login(relay.smarthost_user, relay.smarthost_password)
    except smtplib.SMTPAuthenticationError as error:
        reply = RemoteReply.parse(error.smtp_code, error.smtp_error)
        raise AttemptFailed(HostFailure(
            FailureKind.REJECTED,
            f"{host} refused our login as {relay.smarthost_user}: {reply.render()}")) from None
    except smtplib.SMTPServerDisconnected:
        raise
    except smtplib.SMTPException as error:     # e.g. no mechanism both sides know
        raise AttemptFailed(HostFailure(
            FailureKind.REJECTED, f"login at {host} failed: {error}")) from None


def _client_context(hop: Hop, relay: RelaySection) -> ssl.SSLContext:
    if hop.kind == "smarthost":
        return tls.verifying_client_context(relay.smarthost_ca_file or None)
    return tls.opportunistic_client_context()


def _transaction(client: HopClient, host: str, sender: str, recipients: list[str],
                 message_path: Path, size: int, utf8: bool, outcome: Outcome) -> None:
    """MAIL, RCPT, DATA. Sets outcome.idle when it ended with the session ready
    for another MAIL FROM (never while a transaction may still be open)."""
    results = outcome.results
    limit = client.esmtp_features.get("size", "") if client.has_extn("size") else ""
    if wire.is_number(limit) and int(limit) and size > int(limit):
        too_big = RemoteReply(552, "5.3.4", f"message of {size} octets is larger than the "
                                            f"{limit} {host} accepts")
        results.update(dict.fromkeys(recipients, too_big))
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
            unable = RemoteReply(553, "5.6.7", f"{host} does not support SMTPUTF8")
            results.update(dict.fromkeys(recipients, unable))
            outcome.idle = True
            return
        options += " SMTPUTF8"
        client.command_encoding = "utf-8"
    reply = client.command(f"MAIL FROM:<{sender}>{options}")
    if reply.code != 250:
        if reply.permanent:
            results.update(dict.fromkeys(recipients, reply))
            outcome.idle = True
            return
        raise AttemptFailed(reply)                      # another host may take it
    accepted = []
    for rcpt in recipients:
        results[rcpt] = reply = client.command(f"RCPT TO:<{rcpt}>")
        if reply.code in (250, 251):
            accepted.append(rcpt)
    if not accepted:
        outcome.idle = client.command("RSET").code == 250
        return
    reply = client.command("DATA")
    if reply.code != 354:
        results.update(dict.fromkeys(accepted, reply))
        outcome.idle = client.command("RSET").code == 250     # end the open transaction
        return
    encoder = wire.MessageEncoder()
    pending = []                      # small messages go out in one send, dot included
    with open(message_path, "rb") as source:
        while chunk := source.read(SEND_CHUNK):
            pending.append(encoder.feed(chunk))
            if len(pending) > 1:
                client.send_raw(b"".join(pending))
                pending = []
    pending.append(encoder.finish())
    client.send_raw(b"".join(pending))
    reply = RemoteReply.parse(*client.getreply())
    results.update(dict.fromkeys(accepted, reply))
    outcome.idle = True


# ---------------------------------------------------------------- failures in words

def _failure(error: OSError, host: str, context: str) -> HostFailure:
    """What went wrong, as a sender can read it (never an exception's name):
    `context` starts the sentence, e.g. "could not connect to mx [192.0.2.1]"."""
    if isinstance(error, smtplib.SMTPServerDisconnected) and \
            isinstance(error.__context__, OSError):
        return _failure(error.__context__, host, context)   # smtplib wraps the socket's error
    if isinstance(error, ssl.SSLCertVerificationError):
        return HostFailure(FailureKind.TLS, f"TLS with {host} failed: certificate not accepted: "
                                            f"{error.verify_message or 'not trusted'} "
                                            f"({error.reason})")
    if isinstance(error, ssl.SSLError):
        return HostFailure(FailureKind.TLS, f"TLS with {host} failed "
                                            f"({error.reason or 'handshake error'})")
    kind, detail = _kind_and_detail(error)
    return HostFailure(kind, f"{context}: {detail}")


def _kind_and_detail(error: OSError) -> tuple[FailureKind, str]:
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return FailureKind.DROPPED, "the server closed the connection"
    if isinstance(error, smtplib.SMTPResponseException):
        reply = RemoteReply.parse(error.smtp_code, error.smtp_error)
        return FailureKind.REJECTED, f"it answered {reply.render()}"
    if isinstance(error, smtplib.SMTPException):
        return FailureKind.REJECTED, str(error) or "the SMTP dialogue failed"
    if isinstance(error, ConnectionRefusedError):
        return FailureKind.REFUSED, "connection refused"
    if isinstance(error, TimeoutError):
        return FailureKind.TIMEOUT, "timed out"
    if isinstance(error, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return FailureKind.DROPPED, "the connection was reset"
    if error.errno:
        text = os.strerror(error.errno)                 # "No route to host"
        return FailureKind.UNREACHABLE, text[:1].lower() + text[1:]
    return FailureKind.UNREACHABLE, "the connection failed"
