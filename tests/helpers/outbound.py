"""A DNS server and sink SMTP servers on loopback, for the outbound tests.

- `FakeDNS`: dnslib's DNSServer on 127.0.0.1 (a free UDP port) answering MX, A,
  AAAA and TXT questions from a dict the test fills (DNSBL zones, SPF, DKIM
  keys and DMARC policies are A and TXT records); NXDOMAIN for names it does
  not know, NOERROR with no answer for a known name without that type,
  SERVFAIL (or no answer at all) for names the test marks so.
- `Sink`: an aiosmtpd server on a loopback address, optionally with STARTTLS,
  implicit TLS or required AUTH, answering RCPT TO with scripted replies and
  recording every transaction (sender, recipients with the reply each got,
  content, TLS version, login).
- `BannerServer`: a listener that greets every connection with a fixed reply
  (e.g. `421 4.3.2 busy`) and hangs up.

The `dns` and `sinks` fixtures (tests/integration/conftest.py) start these and
stop every one of them when the test ends. Nothing here listens anywhere but
loopback.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax
from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, SRV, TXT, A, DNSLabel
from dnslib.server import BaseResolver, DNSError, DNSLogger, DNSServer

from .net import HOST, free_port

SINK_NAME = "sink.remote.example"
QUIET_DNS = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


# ---------------------------------------------------------------- DNS

class FakeDNS(BaseResolver):
    """An authoritative-looking DNS server for the names the test gives it."""

    def __init__(self):
        self.records: dict[str, dict[str, list]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()          # no reply at all: the client times out
        self.queries: list[tuple[str, str]] = []
        self.ttl = 60                          # of every answer (resolvers cache it so long)
        self._lock = threading.Lock()
        self._server: DNSServer | None = None

    # -- filling the zone
    def _add(self, name: str, rtype: str, value) -> None:
        with self._lock:
            types = self.records.setdefault(name.lower().rstrip("."), {})
            types.setdefault(rtype, []).append(value)

    def mx(self, domain: str, *hosts: tuple[int, str]) -> None:
        """MX records: (preference, exchange) pairs; ("0", ".") is a null MX."""
        self.records.setdefault(domain.lower(), {})
        for preference, exchange in hosts:
            self._add(domain, "MX", (preference, exchange))

    def a(self, name: str, *addresses: str) -> None:
        self.records.setdefault(name.lower(), {})
        for address in addresses:
            self._add(name, "AAAA" if ":" in address else "A", address)

    def txt(self, name: str, *values: str | bytes, split: int = 255) -> None:
        """TXT records, one per value; a value longer than `split` octets goes out
        as several character-strings, as zone files split long DKIM keys."""
        self.records.setdefault(name.lower(), {})
        for value in values:
            data = value.encode() if isinstance(value, str) else value
            self._add(name, "TXT", [data[i:i + split] for i in range(0, len(data), split)]
                      or [b""])

    def srv(self, name: str, priority: int, weight: int, port: int, target: str) -> None:
        self._add(name, "SRV", (priority, weight, port, target))

    def ptr(self, name: str, target: str) -> None:
        self._add(name, "PTR", target)

    def exists(self, name: str) -> None:
        """The name exists (NOERROR) but has no records of any asked type."""
        self.records.setdefault(name.lower(), {})

    def asked(self, name: str, rtype: str | None = None) -> int:
        with self._lock:
            return sum(1 for n, t in self.queries if n == name.lower() and rtype in (None, t))

    # -- serving
    def resolve(self, request, handler):
        reply = request.reply()
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        rtype = QTYPE[question.qtype]
        with self._lock:
            self.queries.append((name, rtype))
            known = self.records.get(name)
            values = list(known.get(rtype, [])) if known is not None else []
        if name in self.silent:
            raise DNSError(f"dropping the question for {name}")
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if known is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for value in values:
            if rtype == "MX":
                preference, exchange = value
                rdata = MX(DNSLabel(exchange if exchange != "." else "."), preference)
            elif rtype == "A":
                rdata = A(value)
            elif rtype == "TXT":
                rdata = TXT(value)
            elif rtype == "SRV":
                priority, weight, port, target = value
                rdata = SRV(priority, weight, port, DNSLabel(target))
            elif rtype == "PTR":
                rdata = PTR(DNSLabel(value))
            else:
                rdata = AAAA(value)
            reply.add_answer(RR(question.qname, getattr(QTYPE, rtype), rdata=rdata, ttl=self.ttl))
        return reply

    def start(self) -> FakeDNS:
        self._server = DNSServer(self, port=0, address=HOST, logger=QUIET_DNS)
        # dnslib's start_thread polls every 0.5 s, which each stop() waits out
        thread = threading.Thread(target=self._server.server.serve_forever,
                                  kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server.socket.getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server.server.server_close()
            self._server = None


# ---------------------------------------------------------------- sink SMTP servers

@dataclass
class Transaction:
    """One MAIL FROM ... (DATA) on a sink."""
    sender: str
    rcpts: list[tuple[str, str]] = field(default_factory=list)   # (address, reply given)
    content: bytes | None = None          # None: no DATA (every RCPT refused, or dropped)
    data_reply: str = ""
    tls: str | None = None                # the TLS version, None for plain text
    login: str | None = None              # who logged in, None when nobody did
    peer: str = ""
    mail_options: list[str] = field(default_factory=list)   # e.g. SIZE=..., SMTPUTF8

    @property
    def accepted(self) -> list[str]:
        return [address for address, reply in self.rcpts if reply.startswith("250")]


class SinkHandler:
    """aiosmtpd hooks: scripted RCPT replies, every transaction recorded."""

    def __init__(self, sink: Sink):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address          # "<>" for the null sender: aiosmtpd needs it truthy
        address = "" if address == "<>" else address
        envelope.mail_options.extend(mail_options)
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        login = session.auth_data if session.authenticated else None
        transaction = Transaction(sender=address, tls=ssl_object.version() if ssl_object else None,
                                  login=login, peer=str(session.peer[0]) if session.peer else "",
                                  mail_options=list(mail_options))
        session.current = transaction
        with self.sink.lock:
            self.sink.transactions.append(transaction)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.next_reply(address)
        session.current.rcpts.append((address, reply))
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        reply = self.sink.data_reply
        session.current.content = envelope.content
        session.current.data_reply = reply
        return reply


class Sink:
    """A sink SMTP server on one loopback address.

    `replies` maps a recipient address to its reply, or to a list of replies
    given in turn (the last one repeats): {"later@x": ["451 4.2.0 later", "250 OK"]}.
    Everyone else gets `default`. `starttls`: an SSLContext to offer STARTTLS
    with; `implicit_tls`: TLS from the first byte; `auth`: (user, password) that
    must log in (over TLS) before MAIL. `smtp_options` go to aiosmtpd's SMTP
    (e.g. data_size_limit, enable_SMTPUTF8). `refuse_data`: {address: reply}
    answers the DATA command itself with that reply when the address is among
    the accepted recipients, keeping the transaction open (the client must
    RSET before a new MAIL, as with servers that reject at DATA)."""

    def __init__(self, host: str = HOST, port: int | None = None, *, replies: dict | None = None,
                 default: str = "250 2.1.5 OK", data_reply: str = "250 2.0.0 Ok: queued",
                 starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None,
                 auth: tuple[str, str] | None = None, smtp_options: dict | None = None,
                 refuse_data: dict[str, str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.replies = {k.lower(): (list(v) if isinstance(v, (list, tuple)) else [v])
                        for k, v in (replies or {}).items()}
        self.default = default
        self.data_reply = data_reply
        self.auth = auth
        self.refuse_data = {k.lower(): v for k, v in (refuse_data or {}).items()}
        self.lock = threading.Lock()
        self.transactions: list[Transaction] = []
        self.auth_attempts: list[tuple[str, str, bool]] = []
        self.connections = 0
        self._counting = False
        options = dict(server_hostname=SINK_NAME, ident="sink", enable_SMTPUTF8=True)
        if starttls is not None:
            options.update(tls_context=starttls, require_starttls=False)
        if auth is not None:
            options.update(authenticator=self._authenticate, auth_required=True,
                           auth_require_tls=True)
        options.update(smtp_options or {})
        sink = self

        class ScriptedSMTP(SMTP):
            @syntax("DATA")
            async def smtp_DATA(self, arg):
                refusals = [sink.refuse_data[a.lower()] for a in self.envelope.rcpt_tos
                            if a.lower() in sink.refuse_data]
                if refusals:
                    self.session.current.data_reply = refusals[0]
                    await self.push(refusals[0])
                    return
                await super().smtp_DATA(arg)

        class CountingController(Controller):
            def factory(self):
                if sink._counting:
                    with sink.lock:
                        sink.connections += 1
                return ScriptedSMTP(self.handler, **self.SMTP_kwargs)

        self._controller = CountingController(SinkHandler(self), hostname=host, port=self.port,
                                              ssl_context=implicit_tls, ready_timeout=10,
                                              **options)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = (login, password) == self.auth
        with self.lock:
            self.auth_attempts.append((login, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def next_reply(self, address: str) -> str:
        with self.lock:
            script = self.replies.get(address.lower())
            if not script:
                return self.default
            return script.pop(0) if len(script) > 1 else script[0]

    def start(self) -> Sink:
        self._controller.start()
        self._counting = True          # the controller's own start-up probe is not counted
        return self

    def stop(self) -> None:
        self._counting = False
        try:
            self._controller.stop(no_assert=True)
        except Exception:
            pass

    # -- what it saw
    def delivered(self, address: str) -> list[Transaction]:
        """Transactions in which `address` was accepted and the data was too."""
        with self.lock:
            return [t for t in self.transactions if address in t.accepted and
                    t.content is not None and t.data_reply.startswith("250")]

    def deliveries(self) -> list[Transaction]:
        with self.lock:
            return [t for t in self.transactions if t.content is not None]


class BannerServer:
    """Greets every connection with one fixed reply (a busy MX: 421) and closes it."""

    def __init__(self, host: str = HOST, port: int | None = None,
                 banner: str = "421 4.3.2 busy, try another host"):
        self.host = host
        self.port = port or free_port(host)
        self.banner = banner
        self.connections = 0
        self._socket = socket.create_server((host, self.port))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(self.banner.encode() + b"\r\n")
                    conn.recv(1024)               # the client's QUIT, if it sends one
                except OSError:
                    pass

    def start(self) -> BannerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


def mx_relay(dns: FakeDNS, mx_port: int, retry: str = "1s", give_up: str = "5s") -> str:
    """A [relay] section body for MX delivery through the fake DNS."""
    return (f"mode = mx\nnameservers = {HOST}:{dns.port}\nmx_port = {mx_port}\n"
            f"retry = {retry}\ngive_up_after = {give_up}\n")
