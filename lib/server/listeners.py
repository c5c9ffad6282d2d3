"""The only socket code: one ThreadingTCPServer per listening address, connection
caps, TLS wrapping, and thin handlers that move bytes between a socket and a
protocol session, with the deadlines a client must keep.

Every read and write of a connection happens in its own thread: the accept
loop only admits or refuses (a 421 written without blocking), and TLS
handshakes run in the connection's thread. A handler waits for input in
short polls so it notices a shutdown without another thread touching its
socket (an SSL object must not be used from two threads at once).

Deadlines are Postfix's (smtpd_per_request_deadline, smtpd_min_data_rate),
not a timeout per read: a command line must arrive whole within
command_timeout of its first byte, however it trickles in, and DATA must
keep up MIN_DATA_RATE; under stress (near the connection caps) the client
gets stress_timeout instead. A session that is idle when the server stops
is told so at once; one with a message in flight gets shutdown_grace.

An IMAP client in IDLE is silent by design: while the engine is idling the
handler waits for input in IDLE_POLL_SECONDS slices, writes what the engine's
poll() finds meanwhile, and ends the session after IDLE_TIMEOUT (not
command_timeout; stress_timeout under stress). The line that ends IDLE is a
command line like any other, with its deadline.
"""

from __future__ import annotations

import fcntl
import select
import socket
import socketserver
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..checks.connections import ConnectionTracker
from ..config.schema import IMPLICIT_TLS_KINDS, HostPort, LimitsSection
from ..config.tls import info_of
from ..core import replies
from ..imap.session import IDLE_POLL_SECONDS, IDLE_TIMEOUT, ImapSession
from ..log.events import EventLog
from ..pop3.session import Pop3Session
from ..session.engine import Action, ClientInfo, Engine, EngineClass, Step
from ..session.runtime import Runtime, Services
from ..smtp.session import SmtpSession
from .linereader import LineReader, LineTooLong

POLL_SECONDS = 0.5          # how often a waiting connection checks for shutdown and deadlines
PAUSE_SLICE = 0.1           # a tarpit delay sleeps in slices this long, so a shutdown ends it
HANDSHAKE_SECONDS = 60.0    # a TLS handshake gets this long, however long command_timeout is
# Queued output beyond this is sent before more is made or read from disk: small
# enough that a client starts reading a long answer (UID FETCH 1:* FLAGS of 10,000
# messages) while the rest is being made (5.8 -> 4.6 ms), big enough for 300 MB/s.
SEND_BATCH = 64 * 1024
LISTEN_BACKLOG = 1024       # a burst of connections waits in the kernel, not refused
MIN_DATA_RATE = 500         # octets/s that DATA must keep up (Postfix's smtpd_min_data_rate)
PREGREET_PEEK = 100         # octets of an early talker's input kept for the log


class App(Protocol):
    """What listeners need from the running daemon."""
    runtime: Runtime
    closing: threading.Event     # set when remaining sessions must end now

    @property
    def services(self) -> Services: ...


class ClientGone(Exception):
    """The client closed the connection or the network failed."""


class StopNow(Exception):
    """The daemon is closing the remaining connections."""


class MailServer(socketserver.ThreadingTCPServer):
    """One listening address of one kind (smtp, submission, ..., pop3s)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, kind: str, address: HostPort, app: App, handler: type):
        self.kind = kind
        self.app = app
        self.label = f"{kind} {address}"
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.log = EventLog("listener", listener=kind)
        # client addresses holding one of the strangers' slots, so that close() is
        # told what open() was (set operations are atomic; one thread per address)
        self._strangers: set[tuple] = set()
        super().__init__((address.host, address.port), handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # [::]:25 must not also claim 0.0.0.0:25: the config lists both when wanted.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    @property
    def bound(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def process_request(self, request, client_address) -> None:
        ip = client_address[0]
        config = self.app.runtime.config
        connections = self.app.services.connections
        stranger = connections.counts_as_stranger(self.kind, ip, config)
        refusal = connections.open(ip, config, stranger)
        if refusal is not None:
            self.log.warning("refused", client=ip, reason=refusal.text.split(" ", 1)[1])
            self._refuse(request, refusal)
            return
        if stranger:
            self._strangers.add(client_address)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._strangers.discard(client_address)
            connections.close(ip, stranger)
            raise

    def _refuse(self, request: socket.socket, refusal: replies.Reply) -> None:
        """Say why in the protocol's words, without blocking the accept loop."""
        if self.kind in ("smtp", "submission"):
            message = refusal.fill(host=self.app.runtime.hostname).to_bytes()
        elif self.kind == "pop3":
            message = replies.PopReply(False, refusal.text.split(" ", 1)[1], "SYS/TEMP").to_bytes()
        elif self.kind == "imap":
            message = replies.ImapReply("BYE", refusal.text.split(" ", 1)[1],
                                        "UNAVAILABLE").to_bytes()
        else:
            message = b""                      # implicit TLS: nothing readable to say
        try:
            if message:
                request.setblocking(False)
                request.send(message)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            stranger = client_address in self._strangers
            self._strangers.discard(client_address)
            self.app.services.connections.close(client_address[0], stranger)

    def handle_error(self, request, client_address) -> None:
        self.log.exception("handler_crashed", client=client_address[0])


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class Connection:
    """A client socket with the reader, the output buffer and the deadlines."""

    def __init__(self, sock: socket.socket, app: App, limits: LimitsSection,
                 idle: Callable[[], bool]):
        self.sock = sock
        self.app = app
        self.limits = limits
        self.timeout = limits.command_timeout
        self._engine_idle = idle          # the engine's `idle` property
        self.reader = LineReader(sock, wait=self._wait)
        self._deadline = 0.0              # the request being read must be in by then
        self._since = 0.0                 # when that deadline was set or last earned
        self._line_started = False        # the first bytes of the command line being read are in
        self._in_data = False             # reading DATA: the deadline grows with what arrives
        self._out: list[bytes] = []
        self.pending = 0                  # octets queued in _out
        self.dropped_before_tls = 0
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._set_timeouts(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    @property
    def connections(self) -> ConnectionTracker:
        return self.app.services.connections

    def _set_timeouts(self, sock: socket.socket) -> None:
        """How reads wait. A plain socket is left blocking with kernel timeouts:
        a read returns after POLL_SECONDS of silence so the handler can check
        for shutdown, and a send to a client that stops reading gives up after
        the command timeout; that costs one syscall per read, where a Python
        timeout would add a poll() to every recv and send. OpenSSL needs the
        Python timeout, so a TLS socket polls before reading instead."""
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(self.timeout)
            return
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(POLL_SECONDS))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.timeout))

    # ------------------------------------------------------------ reading, with deadlines

    def read_command(self, limit: int) -> bytes:
        """One command line (b"" when the client has gone): it must arrive whole
        within command_timeout of its first byte, and that byte within
        command_timeout, however slowly the line trickles in."""
        self._in_data = False
        self._restart_deadline()
        self._line_started = self.reader.has_buffered()    # pipelined: part of it is here
        return self.reader.readline(limit)

    def read_data(self) -> bytes:
        """A chunk of DATA (b"" when the client has gone). The deadline starts at
        command_timeout; each octet that arrives adds 1/MIN_DATA_RATE s, never
        beyond command_timeout from now: a client trickling its message is cut
        off, a slow link that keeps up the rate is not."""
        if not self._in_data:
            self._in_data = True
            self._restart_deadline()
        chunk = self.reader.read_chunk()
        now = time.monotonic()
        self._deadline = min(self._deadline + len(chunk) / MIN_DATA_RATE, now + self.timeout)
        self._since = now
        return chunk

    def input_waiting(self) -> bool:
        """Has the client sent more than what was read (before our answer)?"""
        if self.reader.has_buffered():
            return True
        try:
            queued = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return struct.unpack("i", queued)[0] > 0

    def talked_first(self, seconds: float) -> bytes:
        """Postfix's pregreet test: listen `seconds` before the greeting and return
        what the client sent meanwhile (b"" from a client that waits, as it must)."""
        if isinstance(self.sock, ssl.SSLSocket):
            return b""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.app.closing.is_set() or self.connections.draining:
                return b""
            if self._poller.poll(min(left, POLL_SECONDS) * 1000):
                return self.sock.recv(PREGREET_PEEK, socket.MSG_PEEK)   # b"": it hung up
        return b""

    def wait_for_input(self, seconds: float, deadline: float) -> bool:
        """IMAP IDLE: has the client sent something within `seconds`? StopNow when
        the daemon stops (an idling session has nothing in flight), TimeoutError
        at `deadline`."""
        sock = self.sock
        if self.reader.has_buffered() or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return True
        end = time.monotonic() + seconds
        while True:
            if self.app.closing.is_set() or self.connections.draining:
                raise StopNow()
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError("idle timeout")
            if now >= end:
                return False
            if self._poller.poll(min(end - now, deadline - now, POLL_SECONDS) * 1000):
                return True             # input, or a hang-up the read will see

    def pause(self, seconds: float) -> None:
        """The tarpit: wait before answering, in short slices so that a shutdown ends it."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.app.closing.is_set() or self.connections.draining:
                return
            time.sleep(min(left, PAUSE_SLICE))

    @property
    def idle(self) -> bool:
        """Nothing in flight: the engine is between commands and no part of the next is here."""
        return not self._in_data and self._engine_idle() and not self.reader.has_buffered()

    def _restart_deadline(self) -> None:
        self._since = time.monotonic()
        self._deadline = self._since + self.timeout

    def _current_deadline(self) -> float:
        """The deadline; under stress, stress_timeout from the last progress if sooner."""
        if self.connections.stressed:
            return min(self._deadline, self._since + self.limits.stress_timeout)
        return self._deadline

    def _wait(self, first: bool) -> None:
        """Called by the reader before each read (`first`) and whenever a read came
        back empty-handed: raise TimeoutError past the deadline, StopNow when the
        daemon closes connections (an idle session's only after a quiet poll, so
        that a client answering our last reply is still heard)."""
        if not self._line_started and not self._in_data and self.reader.has_buffered():
            self._line_started = True       # the line's first bytes: now it must come whole
            self._restart_deadline()
        if isinstance(self.sock, ssl.SSLSocket):
            self._poll_until_readable(first)
            return
        self._check(first)

    def _check(self, first: bool) -> None:
        if self.app.closing.is_set():
            raise StopNow()
        if not first and self.connections.draining and self.idle:
            raise StopNow()
        if time.monotonic() >= self._current_deadline():
            raise TimeoutError("command timeout")

    def _poll_until_readable(self, first: bool) -> None:
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():   # decrypted bytes inside ssl
            return
        while True:
            self._check(first)
            first = False
            remaining = self._current_deadline() - time.monotonic()
            if self._poller.poll(max(0.0, min(remaining, POLL_SECONDS)) * 1000):
                # A TLS record may come in pieces: the read waits one slice at most,
                # then the reader asks again (and the deadline is checked).
                sock.settimeout(POLL_SECONDS)
                return

    def queue(self, data: bytes) -> None:
        self._out.append(data)
        self.pending += len(data)

    def flush(self) -> None:
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self.pending = 0
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.settimeout(self.timeout)     # reads shortened it to a slice
            self.sock.sendall(data)

    def start_tls(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        """Upgrade in place. Whatever the client sent after the command and before
        the handshake is thrown away (RFC 3207 / CVE-2011-0411)."""
        self.flush()
        dropped = self.reader.discard_buffer()
        self._poller.unregister(self.sock)
        self.sock.settimeout(min(self.timeout, HANDSHAKE_SECONDS))
        tls_sock = context.wrap_socket(self.sock, server_side=True)
        self._set_timeouts(tls_sock)
        self.sock = tls_sock
        self.reader.sock = tls_sock
        self._poller.register(tls_sock, select.POLLIN)
        self.dropped_before_tls = dropped
        return tls_sock


SESSIONS: dict[str, EngineClass] = {
    "smtp": SmtpSession, "submission": SmtpSession, "submissions": SmtpSession,
    "pop3": Pop3Session, "pop3s": Pop3Session,
    "imap": ImapSession, "imaps": ImapSession}


class SessionHandler(socketserver.BaseRequestHandler):
    """Moves bytes between one client socket and one protocol session."""

    server: MailServer
    _idle_since: float | None = None      # when the IMAP session's current IDLE began

    def handle(self) -> None:
        app = self.server.app
        runtime = app.runtime                  # this connection keeps this config
        kind = self.server.kind
        engine = SESSIONS[kind]
        ip, port = self.client_address[:2]
        sock = self.request
        tls = None
        if kind in IMPLICIT_TLS_KINDS:
            if runtime.tls is None:            # the config refuses such a listener without [tls]
                raise RuntimeError(f"{kind} listener without a TLS context")
            try:
                sock.settimeout(self._handshake_timeout(runtime.config.limits))
                sock = runtime.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as error:
                EventLog(engine.component).info("tls_failed", client=ip, listener=kind,
                                                reason=str(error)[:200])
                return
            tls = info_of(sock)
        session = engine(runtime, app.services, ClientInfo(ip=ip, port=port, listener=kind,
                                                           tls=tls))
        conn = Connection(sock, app, runtime.config.limits, lambda: session.idle)
        try:
            self._converse(conn, session, runtime)
        except ClientGone as gone:
            session.close(str(gone) or "client disconnected")
        except (ConnectionError, OSError) as error:
            session.close(f"connection error: {error}")
        finally:
            session.close()
            try:
                conn.sock.close()
            except OSError:
                pass

    def _handshake_timeout(self, limits: LimitsSection) -> float:
        if self.server.app.services.connections.stressed:
            return min(limits.command_timeout, limits.stress_timeout, HANDSHAKE_SECONDS)
        return min(limits.command_timeout, HANDSHAKE_SECONDS)

    def _converse(self, conn: Connection, session: Engine, runtime: Runtime) -> None:
        early = conn.talked_first(session.greet_pause) if session.greet_pause else b""
        step = session.greeting(early)
        while True:
            if step.delay:
                conn.pause(step.delay)
            for reply in step.replies:
                conn.queue(reply.to_bytes())
            if step.body is not None:
                for chunk in step.body:         # a POP3 message, streamed from disk
                    conn.queue(chunk)
                    if conn.pending > SEND_BATCH:
                        conn.flush()
            if step.leftover:
                conn.reader.unread(step.leftover)
            if step.action is Action.CLOSE:
                conn.flush()
                return
            if step.action is Action.START_TLS:
                if runtime.tls is None:        # an engine offers STARTTLS/STLS only with one
                    raise RuntimeError("START_TLS without a TLS context")
                try:
                    tls_sock = conn.start_tls(runtime.tls)
                except (OSError, ssl.SSLError) as error:
                    session.tls_failed(str(error)[:200])
                    return
                if conn.dropped_before_tls:
                    session.log.warning("pipelined_before_tls", dropped=conn.dropped_before_tls)
                session.tls_started(info_of(tls_sock))
            elif not conn.reader.has_buffered():
                conn.flush()                   # RFC 2920: answer once the input runs dry
            step = self._next_step(conn, session)

    def _next_step(self, conn: Connection, session: Engine) -> Step:
        try:
            if isinstance(session, ImapSession) and session.idling:
                update = self._idle_update(conn, session)
                if update is not None:
                    return update
            else:
                self._idle_since = None
            if session.receiving_data:
                chunk = conn.read_data()
                if not chunk:
                    raise ClientGone("client disconnected during DATA")
                return session.feed_data(chunk)
            try:
                line = conn.read_command(session.max_line)
            except LineTooLong:
                return session.line_too_long()
            if not line:
                raise ClientGone("client disconnected")
            return session.feed_line(line, session.watches_pipelining and conn.input_waiting())
        except TimeoutError:
            return session.timeout()
        except StopNow:
            return session.shutdown()

    def _idle_update(self, conn: Connection, session: ImapSession) -> Step | None:
        """In IDLE: None once the client sends something (its line is read as
        usual), else the first poll() that found news, every IDLE_POLL_SECONDS."""
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        deadline = self._idle_since + IDLE_TIMEOUT
        if conn.connections.stressed:
            deadline = min(deadline, self._idle_since + conn.limits.stress_timeout)
        while not conn.wait_for_input(IDLE_POLL_SECONDS, deadline):
            update = session.poll()
            if update.replies:
                return update
        return None
