"""The SMTP client towards a next hop, against scripted servers on loopback:
TLS by the hop's name while connected to its address, a result per
recipient, failures in plain words, and the connection cache."""

from __future__ import annotations

import errno
import smtplib
import socket
import socketserver
import ssl
import threading
import time

import pytest

from lib.config import tls
from lib.outbound import client as client_module
from lib.outbound.client import ConnectionCache, HopClient, transact
from lib.outbound.nexthop import Hop
from lib.outbound.results import AttemptFailed, FailureKind, HostFailure, RemoteReply

from ..support import BASE_INI, ini

HOP_NAME = "mx.remote.example"


class ScriptedServer(socketserver.ThreadingTCPServer):
    """An SMTP server on 127.0.0.1 that answers from a script. `rcpt` maps an
    address to its (maybe multi-line) reply; `data_end` answers the message,
    or "drop" hangs up instead; `tls` offers STARTTLS. Names asked for by
    SNI are kept in `sni`."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, greeting: str = "220 sink.example ESMTP", rcpt: dict | None = None,
                 data_end: str = "250 2.0.0 queued", tls_context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.greeting, self.rcpt, self.data_end = greeting, rcpt or {}, data_end
        self.tls_context = tls_context
        self.sni: list[str | None] = []
        if tls_context is not None:
            tls_context.sni_callback = lambda sock, name, context: self.sni.append(name)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _ScriptedHandler(socketserver.StreamRequestHandler):
    server: ScriptedServer

    def say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        script = self.server
        self.say(script.greeting)
        if not script.greeting.startswith("220"):
            return
        while line := self.rfile.readline().decode().strip():
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.say("250-sink.example\r\n250-8BITMIME\r\n"
                         + ("250 STARTTLS" if script.tls_context else "250 SIZE 1000000"))
            elif verb == "STARTTLS":
                self.say("220 2.0.0 go ahead")
                secured = script.tls_context.wrap_socket(self.connection, server_side=True)
                self.rfile, self.wfile = secured.makefile("rb"), secured.makefile("wb", 0)
            elif verb == "RCPT":
                self.say(script.rcpt.get(line[9:-1], "250 2.1.5 OK"))
            elif verb == "DATA":
                self.say("354 go ahead")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                if script.data_end == "drop":
                    return
                self.say(script.data_end)
            elif verb == "QUIT":
                self.say("221 2.0.0 bye")
                return
            else:
                self.say("250 2.0.0 OK")


@pytest.fixture
def scripted():
    started = []

    def start(**script) -> ScriptedServer:
        server = ScriptedServer(**script)
        server.thread.start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def runtime(tmp_path):
    from lib.session.runtime import load_runtime
    path = tmp_path / "c.ini"
    path.write_text(ini(BASE_INI))
    return load_runtime(path)


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def message(tmp_path):
    path = tmp_path / "m.msg"
    path.write_bytes(b"Subject: out\n\n.dot\nbody\n")
    return path


def connected(server: ScriptedServer, tls_name: str = HOP_NAME) -> HopClient:
    client = HopClient(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                       "mail.example.org", tls_name)
    assert client.getreply()[0] == 220
    assert client.ehlo()[0] == 250
    return client


# ---------------------------------------------------------------- TLS by the hop's name

def test_starttls_names_the_hop_while_connected_to_its_address(scripted, certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = scripted(tls_context=context)
    client = connected(server)
    assert client.tls_version is None
    reply = client.start_tls(tls.opportunistic_client_context())
    assert reply == RemoteReply(220, "2.0.0", "go ahead")
    assert server.sni == [HOP_NAME]                       # SNI: the MX's name, not 127.0.0.1
    assert client.tls_version and client.tls_version.startswith("TLSv1")
    assert client.esmtp_features == {}                    # what was said before TLS: forgotten
    assert client.ehlo()[0] == 250                        # RFC 3207 4.2: greet again
    client.quit()


def test_the_certificate_is_checked_against_the_hop_name(scripted, certificate):
    # the certificate is for mail.example.org and also for IP 127.0.0.1: had the
    # address been checked instead of the name, both connections would pass
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = scripted(tls_context=context)
    good = connected(server, tls_name="mail.example.org")
    good.start_tls(tls.verifying_client_context(str(certificate[0])))
    assert good.tls_version
    good.quit()
    wrong = connected(server, tls_name="other.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.start_tls(tls.verifying_client_context(str(certificate[0])))
    wrong.close()


# ---------------------------------------------------------------- a result per recipient

def test_each_recipient_keeps_its_reply_multi_line_ones_too(scripted, runtime, tmp_path):
    server = scripted(rcpt={"bad@remote.example": "550-5.1.1 no such user\r\n"
                                                  "550 5.1.1 check the address"})
    hop = Hop(HOP_NAME, ("127.0.0.1",), server.port, "mx")
    outcome = transact(runtime, hop, "127.0.0.1", "alice@example.org",
                       ["bad@remote.example", "good@remote.example"], message(tmp_path), False)
    assert outcome.results == {
        "bad@remote.example": RemoteReply(550, "5.1.1", "no such user check the address"),
        "good@remote.example": RemoteReply(250, "2.0.0", "queued")}
    assert outcome.relay == f"{HOP_NAME}[127.0.0.1]:{server.port}" and outcome.tls is None
    assert outcome.idle


def test_a_connection_lost_after_the_recipients_retries_only_those(scripted, runtime, tmp_path):
    server = scripted(rcpt={"bad@remote.example": "550 5.1.1 no such user"}, data_end="drop")
    hop = Hop(HOP_NAME, ("127.0.0.1",), server.port, "mx")
    outcome = transact(runtime, hop, "127.0.0.1", "alice@example.org",
                       ["bad@remote.example", "good@remote.example"], message(tmp_path), False)
    assert outcome.results["bad@remote.example"] == RemoteReply(550, "5.1.1", "no such user")
    assert outcome.results["good@remote.example"] == HostFailure(
        FailureKind.DROPPED, f"connection to {HOP_NAME} [127.0.0.1] lost before the message "
                             "was accepted: the server closed the connection")
    assert not outcome.idle


# ---------------------------------------------------------------- a host that cannot be used

def test_a_refused_connection_is_told_in_plain_words(runtime, tmp_path):
    port = closed_port()
    hop = Hop(HOP_NAME, ("127.0.0.1",), port, "mx")
    with pytest.raises(AttemptFailed) as caught:
        transact(runtime, hop, "127.0.0.1", "alice@example.org", ["x@remote.example"],
                 message(tmp_path), False)
    assert caught.value.result == HostFailure(
        FailureKind.REFUSED, f"could not connect to {HOP_NAME} [127.0.0.1]: connection refused")


def test_a_busy_greeting_makes_the_host_unusable(scripted, runtime, tmp_path):
    server = scripted(greeting="421 4.3.2 too busy")
    hop = Hop(HOP_NAME, ("127.0.0.1",), server.port, "mx")
    with pytest.raises(AttemptFailed) as caught:
        transact(runtime, hop, "127.0.0.1", "alice@example.org", ["x@remote.example"],
                 message(tmp_path), False)
    assert caught.value.result == HostFailure(
        FailureKind.REJECTED, f"{HOP_NAME} [127.0.0.1] greeted us with 421 4.3.2 too busy")


def _disconnected_by(error: OSError) -> smtplib.SMTPServerDisconnected:
    """smtplib's way: the socket's error, re-raised as a disconnection."""
    try:
        try:
            raise error
        except OSError as inner:
            # no "from": smtplib chains implicitly, and __context__ is what the code reads
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {inner}")  # noqa: B904
    except smtplib.SMTPServerDisconnected as outer:
        return outer


def _verify_failed() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                            "verify failed: self-signed certificate (_ssl.c:1006)")
    error.reason, error.verify_message = "CERTIFICATE_VERIFY_FAILED", "self-signed certificate"
    return error


@pytest.mark.parametrize("error, kind, words", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), FailureKind.REFUSED,
     "X: connection refused"),
    (TimeoutError("timed out"), FailureKind.TIMEOUT, "X: timed out"),
    (_disconnected_by(TimeoutError("timed out")), FailureKind.TIMEOUT, "X: timed out"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), FailureKind.DROPPED,
     "X: the server closed the connection"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), FailureKind.DROPPED,
     "X: the connection was reset"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), FailureKind.UNREACHABLE,
     "X: no route to host"),
    (OSError("?"), FailureKind.UNREACHABLE, "X: the connection failed"),
    (smtplib.SMTPHeloError(501, b"5.5.4 go away"), FailureKind.REJECTED,
     "X: it answered 501 5.5.4 go away"),
    (_verify_failed(), FailureKind.TLS, "TLS with mx [192.0.2.2] failed: certificate not "
                                        "accepted: self-signed certificate "
                                        "(CERTIFICATE_VERIFY_FAILED)"),
])
def test_failures_are_described_without_exception_names(error, kind, words):
    failure = client_module._failure(error, "mx [192.0.2.2]", "X")
    assert failure == HostFailure(kind, words)
    assert type(error).__name__ not in failure.render()
    assert "Errno" not in failure.render() and "_ssl.c" not in failure.render()


# ---------------------------------------------------------------- the connection cache

class FakeClient:
    def __init__(self, transactions: int = 1):
        self.transactions = transactions
        self.closed = False

    def quit(self):
        self.closed = True


def test_connection_cache_expires_idle_and_worn_connections():
    cache = ConnectionCache(idle=0.1, uses=3)
    first = FakeClient()
    cache.put(("mx", "a"), first)
    assert cache.take(("mx", "a")) is first
    assert cache.take(("mx", "a")) is None            # taken: not shared between users
    worn = FakeClient(transactions=3)
    cache.put(("mx", "b"), worn)                      # used its allowance: closed at once
    assert worn.closed and cache.take(("mx", "b")) is None
    idle = FakeClient()
    cache.put(("mx", "c"), idle)
    time.sleep(0.15)
    cache.expire()
    assert idle.closed and cache.take(("mx", "c")) is None


def test_a_cached_connection_carries_the_next_message(scripted, runtime, tmp_path,
                                                      monkeypatch):
    server = scripted()
    hop = Hop(HOP_NAME, ("127.0.0.1",), server.port, "mx")
    cache = ConnectionCache()
    connections = []
    original = socket.create_connection

    def counting(*args, **kwargs):
        connections.append(args[0])
        return original(*args, **kwargs)
    monkeypatch.setattr(client_module.socket, "create_connection", counting)
    try:
        for _ in range(3):
            outcome = transact(runtime, hop, "127.0.0.1", "alice@example.org",
                               ["x@remote.example"], message(tmp_path), False, cache)
            assert outcome.results["x@remote.example"] == RemoteReply(250, "2.0.0", "queued")
    finally:
        cache.close()
    assert connections == [("127.0.0.1", server.port)]
