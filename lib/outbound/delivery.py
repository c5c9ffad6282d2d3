"""Outbound delivery: the queue runner started by `serve`, next-hop look-up
([routes], MX records, smarthost), the SMTP client transaction, retries and
bounces.

Each queue entry is worked on by one thread at a time, under the entry's
lock. Recipients are grouped by next hop; one SMTP transaction per host
carries all of a group's recipients, and every recipient keeps its own reply,
so a 4xx for one retries just that one. 4xx replies and connection failures
are retried on the [relay] retry schedule until give_up_after; 5xx replies,
a null MX and a domain that does not exist fail at once. Failed recipients
are reported to the sender in one DSN, and the entry is removed only after
every recipient is delivered or bounced.
"""

from __future__ import annotations

import email.utils
import heapq
import os
import random
import smtplib
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..config import tls
from ..config.router import REJECTED
from ..config.schema import Config, HostPort, format_duration
from ..core import wire
from ..core.addresses import parse_mailbox
from ..core.errors import PermanentFailure, TemporaryFailure
from ..log.events import EventLog
from ..session.runtime import Runtime, Services
from ..store.intake import Destinations
from ..store.spool import DELIVERED, FAILED, PENDING, Envelope, QueueBusy, Recipient, new_id
from . import dsn

CONNECT_TIMEOUT = 30.0        # seconds to connect and get the greeting
COMMAND_TIMEOUT = 300.0       # RFC 5321 4.5.3.2: generous; a slow MX is not a dead one
WORKERS = 8                   # delivery threads: most of their time is waiting for remote hosts
RESCAN_SECONDS = 30.0         # look at the whole queue at least this often
SEND_CHUNK = 256 * 1024
CACHE_IDLE_SECONDS = 5.0      # an idle cached connection is closed after this
CACHE_MAX_USES = 100          # transactions per connection before a fresh one
GAVE_UP = "gave up after"     # marks a recipient that expired rather than failed
DSN_RETRY = 60.0              # seconds before trying again a bounce that could not be written


@dataclass(frozen=True)
class Hop:
    """One host to try, with its addresses in the order to try them."""
    name: str                         # for TLS (SNI, verification) and the log
    addresses: tuple[str, ...]
    port: int
    kind: str                         # "route", "mx", "smarthost"


@dataclass
class Outcome:
    """What one attempt did to each recipient address."""
    replies: dict[str, str] = field(default_factory=dict)     # address -> reply text
    relay: str = ""                   # host[ip]:port that answered
    tls: str | None = None
    idle: bool = False                # the session is between transactions: reusable


# ---------------------------------------------------------------- next hops

class HopFinder:
    """Where mail for a domain goes: [routes], else smarthost, else MX records."""

    def __init__(self, config: Config):
        self.config = config
        self._resolver = None

    def hops(self, domain: str) -> list[Hop]:
        relay = self.config.relay
        route = self.config.routes.get(domain)
        if route is not None:
            return [self._static(route, "route")]
        if relay.mode == "smarthost":
            return [self._static(relay.smarthost, "smarthost")]
        if domain.startswith("["):                 # an address literal: that host
            literal = domain[1:-1]
            literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
            return [Hop(literal, (literal,), relay.mx_port, "mx")]
        return self._mx_hops(domain)

    def _static(self, target: HostPort, kind: str) -> Hop:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise TemporaryFailure(f"cannot resolve {target.host}: {error.strerror}") from None
        addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
        return Hop(target.host, addresses, target.port, kind)

    def _dns(self):
        """The resolver ([relay] nameservers, or the system's), made once."""
        if self._resolver is None:
            dns = _dnspython()
            nameservers = self.config.relay.nameservers
            resolver = dns.resolver.Resolver(configure=not nameservers)
            if nameservers:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port)
                                        for ns in nameservers]
            resolver.lifetime = 20.0
            self._resolver = resolver
        return self._resolver

    def _query(self, name: str, rdtype: str):
        """Answers, [] when the name has no such records; raises NXDOMAIN for a
        name that does not exist and TemporaryFailure for the rest."""
        resolver = self._dns()
        dns = _dnspython()
        try:
            return list(resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.NoAnswer:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
            raise TemporaryFailure(f"DNS look-up of {name} {rdtype} failed: "
                                   f"{type(error).__name__}") from None
        except dns.exception.DNSException as error:
            raise TemporaryFailure(f"DNS look-up of {name} {rdtype} failed: {error}") from None

    def _addresses(self, name: str) -> tuple[str, ...]:
        found = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [record.address for record in self._query(name, rdtype)]
            except _dnspython().resolver.NXDOMAIN:
                return ()
        return tuple(found)

    def _mx_hops(self, domain: str) -> list[Hop]:
        port = self.config.relay.mx_port
        try:
            records = self._query(domain, "MX")
        except _dnspython().resolver.NXDOMAIN:
            raise PermanentFailure(f"550 5.1.2 domain {domain} does not exist") from None
        if not records:                            # RFC 5321 5.1: the implicit MX
            addresses = self._addresses(domain)
            if not addresses:
                raise PermanentFailure(f"550 5.1.2 {domain} has no MX and no address")
            return [Hop(domain, addresses, port, "mx")]
        if any(r.preference == 0 and r.exchange.to_text() == "." for r in records):
            # RFC 7505: a null MX says the domain accepts no mail at all
            raise PermanentFailure(f"556 5.1.10 {domain} accepts no mail (null MX)")
        by_preference: dict[int, list[str]] = {}
        for record in records:
            by_preference.setdefault(record.preference, []).append(
                record.exchange.to_text().rstrip("."))
        hops = []
        for preference in sorted(by_preference):
            names = by_preference[preference]
            random.shuffle(names)                  # RFC 5321 5.1: spread equal preferences
            for name in names:
                addresses = self._addresses(name)
                if addresses:
                    hops.append(Hop(name, addresses, port, "mx"))
        if not hops:
            raise TemporaryFailure(f"no address found for any MX host of {domain}")
        return hops


def _dnspython():
    """The dnspython package, or a TemporaryFailure that names it (DESIGN 1)."""
    try:
        import dns.exception
        import dns.nameserver
        import dns.resolver
    except ImportError:
        raise TemporaryFailure("MX look-ups need the dnspython package "
                               "(apt install python3-dnspython)") from None
    return dns


# ---------------------------------------------------------------- one SMTP transaction

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


# ---------------------------------------------------------------- the queue runner

class QueueRunner:
    """Delivers due queue entries with a few threads; wakes when mail is queued."""

    def __init__(self, app, workers: int = WORKERS):
        """`app` gives the current Runtime (`app.runtime`, swapped on reload) and
        the Services (`app.services`)."""
        self.app = app
        self.spool = app.services.spool
        self.log = EventLog("delivery")
        self._workers = workers
        self._lock = threading.Condition()
        self._due: list[tuple[float, str]] = []       # heap of (when, id) still to come
        self._ready: deque[tuple[float, str]] = deque()   # (when, id) whose time has come
        self._scheduled: dict[str, float] = {}
        self._busy: set[str] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_rescan = 0.0
        self._wake_mtime = 0.0
        self._finder: HopFinder | None = None      # made again when a reload brings a config

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self.spool.notify = self.enqueued
        self.rescan()
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"delivery-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watcher = threading.Thread(target=self._watch, name="queue-watch", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def enqueued(self, queue_id: str) -> None:
        """A new entry was committed in this process: deliver it now."""
        self._schedule(queue_id, 0.0)

    def rescan(self) -> None:
        """Read every envelope and schedule it (at start, on `queue flush`, now and then)."""
        self._last_rescan = time.monotonic()
        for envelope in self.spool.entries():
            if envelope.pending:
                self._schedule(envelope.id, envelope.next_attempt)

    def _schedule(self, queue_id: str, when: float) -> None:
        with self._lock:
            if self._scheduled.get(queue_id, float("inf")) <= when:
                return                            # already due as early or earlier
            self._scheduled[queue_id] = when
            if when <= time.time():
                self._ready.append((when, queue_id))
            else:
                heapq.heappush(self._due, (when, queue_id))
            self._lock.notify()

    def _watch(self) -> None:
        """Notice `queue flush` and `sendmail` from other processes (the wake file)."""
        while not self._stopping.wait(1.0):
            mtime = self.spool.wake_time()
            if mtime != self._wake_mtime or time.monotonic() - self._last_rescan > RESCAN_SECONDS:
                self._wake_mtime = mtime
                try:
                    self.rescan()
                except Exception:            # the watcher must outlive any one bad look
                    self.log.exception("rescan_failed")

    def _next(self) -> str | None:
        """The next due entry, marked busy; None after a second with nothing due."""
        with self._lock:
            now = time.time()
            while self._due and self._due[0][0] <= now:   # their time has come
                self._ready.append(heapq.heappop(self._due))
            while self._ready:
                when, queue_id = self._ready.popleft()
                if self._scheduled.get(queue_id) != when:
                    continue                      # superseded by an earlier schedule
                del self._scheduled[queue_id]
                if queue_id in self._busy:
                    continue                      # its worker reschedules it when done
                self._busy.add(queue_id)
                self._update_flow()
                return queue_id
            wait = (self._due[0][0] - now) if self._due else 1.0
            self._lock.wait(min(max(wait, 0.01), 1.0))
            return None

    def _update_flow(self) -> None:
        """Tell the intake how far delivery lags: entries due and not taken, and
        entries in flight. (Called with the lock held.)"""
        self.app.services.flow.update(len(self._ready) + len(self._busy))

    def _work(self) -> None:
        cache = ConnectionCache()
        try:
            self._work_with(cache)
        finally:
            cache.close()

    def _work_with(self, cache: ConnectionCache) -> None:
        while not self._stopping.is_set():
            queue_id = self._next()
            if queue_id is None:
                cache.expire()
                continue
            try:
                when = self.attempt(queue_id, cache)
            except Exception:
                self.log.exception("attempt_crashed", msg=queue_id)
                when = time.time() + 60.0
            finally:
                with self._lock:
                    self._busy.discard(queue_id)
                    self._update_flow()
            if when is not None:
                self._schedule(queue_id, when)

    # ------------------------------------------------------------ one entry

    def attempt(self, queue_id: str, cache: ConnectionCache | None = None) -> float | None:
        """Try every due recipient of one entry; return when to look again (None: done)."""
        runtime = self.app.runtime
        try:
            with self.spool.locked(queue_id):
                envelope = self.spool.load(queue_id)
                due = [r for r in envelope.pending if r.next_attempt <= time.time()]
                if due:
                    self._deliver(runtime, envelope, due, cache)
                reported = self._report_failures(runtime, envelope)
                unreported = any(r.state == FAILED and not r.reported
                                 for r in envelope.recipients)
                if not envelope.pending and not unreported:
                    self._finish(envelope)       # a finished entry goes without a last save
                    return None
                if due or reported or unreported:
                    self.spool.save(envelope)
                if envelope.pending:
                    return envelope.next_attempt
                return time.time() + DSN_RETRY     # only a bounce left to send
        except QueueBusy:
            return time.time() + 5.0           # `queue remove` or another process has it
        except FileNotFoundError:
            return None                        # removed meanwhile

    def _hop_finder(self, config: Config) -> HopFinder:
        finder = self._finder
        if finder is None or finder.config is not config:
            finder = self._finder = HopFinder(config)
        return finder

    def _deliver(self, runtime: Runtime, envelope: Envelope, due: list[Recipient],
                 cache: ConnectionCache | None) -> None:
        finder = self._hop_finder(runtime.config)
        groups: dict[str, list[Recipient]] = {}
        for recipient in due:
            domain = recipient.address.rpartition("@")[2].lower()
            key = "smarthost" if runtime.config.relay.mode == "smarthost" and \
                domain not in runtime.config.routes else domain
            groups.setdefault(key, []).append(recipient)
        path = self.spool.message_path(envelope.id)
        for key, recipients in groups.items():
            domain = recipients[0].address.rpartition("@")[2].lower()
            log = self.log.bind(msg=envelope.id)
            try:
                outcome = self._try_hops(runtime, finder.hops(domain), envelope, recipients,
                                         path, log, cache)
            except PermanentFailure as failure:
                outcome = Outcome(replies={r.address: str(failure) for r in recipients},
                                  relay="none")
            except TemporaryFailure as failure:
                outcome = Outcome(replies={r.address: f"451 4.4.1 {failure}"
                                           for r in recipients}, relay="none")
            except Exception as error:       # a bug or the unforeseen: retry, expire, bounce
                log.exception("attempt_failed", to=[r.address for r in recipients])
                outcome = Outcome(replies={r.address: f"451 4.3.0 local error: "
                                           f"{type(error).__name__}: {error}"
                                           for r in recipients}, relay="none")
            self._record(runtime, envelope, recipients, outcome, log)

    def _try_hops(self, runtime, hops: list[Hop], envelope, recipients, path, log,
                  cache: ConnectionCache | None) -> Outcome:
        last = "no host to try"
        sender = envelope.sender
        for hop in hops:
            for address in hop.addresses:
                try:
                    return transact(runtime, hop, address, sender,
                                    [r.address for r in recipients], path, envelope.utf8, cache)
                except TemporaryFailure as failure:
                    last = str(failure)
                    log.info("host_failed", relay=f"{hop.name}[{address}]:{hop.port}",
                             reason=last)
        raise TemporaryFailure(last)

    def _record(self, runtime: Runtime, envelope: Envelope, recipients: list[Recipient],
                outcome: Outcome, log: EventLog) -> None:
        relay = runtime.config.relay
        now = time.time()
        expired = now - envelope.created >= relay.give_up_after
        for recipient in recipients:
            reply = outcome.replies.get(recipient.address, "451 4.3.0 no reply recorded")
            recipient.attempts += 1
            recipient.last_reply = reply
            recipient.relay = outcome.relay
            if reply.startswith("2"):
                recipient.state = DELIVERED
            elif reply.startswith("4") and not expired:
                wait = relay.retry[min(recipient.attempts - 1, len(relay.retry) - 1)]
                # one last try right at the deadline rather than long after it
                recipient.next_attempt = min(now + wait, envelope.created + relay.give_up_after)
            else:
                recipient.state = FAILED
                if reply.startswith("4"):
                    recipient.last_reply = f"{reply} ({GAVE_UP} " \
                                           f"{format_duration(relay.give_up_after)})"
            log.info("attempt", to=recipient.address, relay=outcome.relay,
                     tls=outcome.tls or "no", reply=reply, state=recipient.state
                     if recipient.state != PENDING else "deferred",
                     next=_clock(recipient.next_attempt) if recipient.state == PENDING else None,
                     attempts=recipient.attempts)

    def _report_failures(self, runtime: Runtime, envelope: Envelope) -> bool:
        """A DSN for recipients that failed since the last one: the sender hears
        of a permanent failure now, not when the last retry of the others ends.
        True when recipients were reported; a DSN that could not be written
        (disk full) leaves them to the next attempt."""
        failed = [r for r in envelope.recipients if r.state == FAILED and not r.reported]
        if not failed:
            return False
        if envelope.sender:
            try:
                send_dsn(runtime, self.app.services, envelope, failed,
                         self.spool.message_path(envelope.id))
            except Exception:
                self.log.exception("bounce_failed", msg=envelope.id)
                return False
        else:
            self.log.info("no_bounce", msg=envelope.id,
                          reason="null sender: a bounce is never bounced")
        for recipient in failed:
            recipient.reported = True
        return True

    def _finish(self, envelope: Envelope) -> None:
        """Every recipient is delivered or reported: the entry goes."""
        self.spool.remove(envelope.id)
        self.log.info("done", msg=envelope.id,
                      delivered=sum(r.state == DELIVERED for r in envelope.recipients),
                      failed=sum(r.state == FAILED for r in envelope.recipients))


def send_dsn(runtime: Runtime, services: Services, envelope: Envelope, failed: list[Recipient],
             message_path) -> str | None:
    """Deliver or queue a DSN about `failed` to the envelope sender; return its id."""
    log = EventLog("delivery").bind(msg=envelope.id)
    try:
        with open(message_path, "rb") as handle:
            head = dsn.original_header(handle.read(dsn.HEADER_LIMIT))
    except FileNotFoundError:
        head = b""
    expired = all(GAVE_UP in r.last_reply for r in failed)
    report = dsn.build_dsn(
        envelope, [dsn.FailedRecipient(r, _remote_mta(r.relay)) for r in failed],
        runtime.hostname, head, expired=expired)
    try:
        sender = parse_mailbox(envelope.sender, utf8=True)
    except ValueError:
        log.warning("no_bounce", to=envelope.sender, reason="the sender is not an address")
        return None
    resolution = runtime.router.resolve(sender)
    if resolution.result == REJECTED:
        log.warning("no_bounce", to=envelope.sender,
                    reason="the sender is a local address that does not exist")
        return None
    dsn_id = new_id()
    header = (f"Received: by {runtime.hostname} (mailbox_appliance) id {dsn_id}; "
              f"{email.utils.formatdate(localtime=True)}\n").encode()
    incoming = services.intake.begin(dsn_id, None, Destinations.of([resolution]), header,
                                     utf8=envelope.utf8, origin={"dsn_for": envelope.id})
    try:
        incoming.write(report)
        incoming.commit()
    except BaseException:
        incoming.discard()
        raise
    log.info("bounce", dsn=dsn_id, to=envelope.sender, failed=[r.address for r in failed])
    return dsn_id


def _remote_mta(relay: str) -> str | None:
    """The host name in "host[ip]:port", for the DSN's Remote-MTA field."""
    if not relay or relay == "none":
        return None
    return relay.split("[", 1)[0]


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
