"""The process: logging, binding every listener, running until a signal, and
stopping cleanly (stop accepting, let sessions finish, close the rest)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import pwd
import queue
import signal
import sys
import threading
import time
from pathlib import Path

from .config import Config
from .delivery import QueueRunner
from .listeners import MailServer, SessionHandler
from .logfmt import LOGGER_NAME, EventLog, LineFormatter
from .services import Runtime, Services

FORCED_CLOSE_WAIT = 5.0      # after the grace period: time for handlers to say 421 and go
LOG_DRAIN_SECONDS = 0.05     # log lines reach the file at most this late


class StartError(Exception):
    """The server cannot start (a port in use, a folder it cannot create)."""


_listener: logging.handlers.QueueListener | None = None

# Every record would otherwise look up the process id and thread name; the
# key=value line carries its own ids.
logging.logProcesses = False
logging.logThreads = False
logging.logMultiprocessing = False


class FastQueueHandler(logging.handlers.QueueHandler):
    """Our records carry a finished message and no arguments: queue them as they
    are. The stock prepare() copies and re-formats every record."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args or record.exc_info:
            return super().prepare(record)
        return record


class BatchingListener(logging.handlers.QueueListener):
    """Writes whatever has queued up in one go: one write and one flush per
    burst of records, not per record."""

    def _monitor(self) -> None:
        # Sleep and drain rather than block in get(): a thread blocked in get()
        # would have to be woken (a futex call and a context switch) for every
        # record a session puts on the queue.
        records = self.queue
        while True:
            batch = []
            try:
                while len(batch) < 4096:
                    batch.append(records.get_nowait())
            except queue.Empty:
                pass
            stop = any(item is self._sentinel for item in batch)
            batch = [item for item in batch if item is not self._sentinel]
            for handler in self.handlers:
                _emit_batch(handler, batch)
            if stop:
                return
            if len(batch) < 4096:
                time.sleep(LOG_DRAIN_SECONDS)


def _emit_batch(handler: logging.Handler, batch: list[logging.LogRecord]) -> None:
    if not batch:
        return
    if isinstance(handler, logging.StreamHandler) and not \
            isinstance(handler, logging.handlers.SysLogHandler):
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()
        try:
            text = "".join(handler.format(record) + handler.terminator for record in batch)
            with handler.lock:
                handler.stream.write(text)
                handler.flush()
        except Exception:
            handler.handleError(batch[0])
        return
    for record in batch:
        handler.handle(record)


def configure_logging(config: Config) -> None:
    """Send the log to [server] log. Sessions only put records on a queue; one
    thread does the writing, so a slow disk or syslog never stalls a client."""
    global _listener
    stop_logging()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    target = config.server.log
    if target == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
    elif target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(LineFormatter(with_time=False))
        handler.ident = "mailbox_appliance: "
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler reopens the file when logrotate moves it away.
        handler = logging.handlers.WatchedFileHandler(target, encoding="utf-8")
        handler.setFormatter(LineFormatter())
    records: queue.SimpleQueue = queue.SimpleQueue()
    _listener = BatchingListener(records, handler)
    _listener.start()
    logger.addHandler(FastQueueHandler(records))
    logger.setLevel(config.server.log_level.upper())
    logger.propagate = False


def stop_logging() -> None:
    """Write out every queued record (at exit, and before re-configuring)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        for handler in _listener.handlers:
            handler.close()
        _listener = None


class Daemon:
    """Every listener of one config, in one process."""

    def __init__(self, config_path: Path, runtime: Runtime):
        self.config_path = config_path
        self.runtime = runtime
        self.services = Services.create(runtime.config)
        self.closing = threading.Event()
        self.log = EventLog("daemon")
        self._stop = threading.Event()
        self._servers: dict[tuple, MailServer] = {}
        self._threads: list[threading.Thread] = []
        self.runner: QueueRunner | None = None

    # ------------------------------------------------------------ start

    def prepare_storage(self) -> None:
        cfg = self.runtime.config
        try:
            cfg.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise StartError(f"[server] data_dir: cannot create {cfg.server.data_dir}: "
                             f"{error.strerror}") from None
        stale = self.services.store.clean_stale_temps()
        orphans = self.services.spool.clean_orphans()
        if stale or orphans:
            self.log.info("cleaned", stale_temps=stale, queue_orphans=orphans)

    def bind(self) -> None:
        for kind, address in self.runtime.config.listen.listeners():
            try:
                server = MailServer(kind, address, self, SessionHandler)
            except OSError as error:
                self.close_listeners()
                raise StartError(f"[listen] {kind}: cannot listen on {address}: "
                                 f"{error.strerror or error}") from None
            self._servers[(kind, address)] = server

    def start(self) -> None:
        for server in self._servers.values():
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                      name=f"accept {server.label}", daemon=True)
            thread.start()
            self._threads.append(thread)
            line = f"listening {server.kind} {server.bound}"
            print(line, flush=True)
            self.log.info("listening", kind=server.kind, address=server.bound)

    # ------------------------------------------------------------ run and stop

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit code."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        self.prepare_storage()
        self.bind()
        drop_privileges(self.runtime.config, self.log)
        self.start()
        self.runner = QueueRunner(self)
        self.runner.start()
        self.log.info("started", pid=os.getpid(), config=str(self.config_path),
                      hostname=self.runtime.hostname, user=_user_name())
        while not self._stop.wait(1.0):
            pass
        self.stop()
        return 0

    def _on_stop_signal(self, signum, frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def close_listeners(self) -> None:
        for server in self._servers.values():
            server.server_close()
        self._servers.clear()

    def stop(self) -> None:
        """Stop accepting; give sessions `shutdown_grace` to finish; then 421 the rest."""
        for server in self._servers.values():
            server.shutdown()
        self.close_listeners()
        grace = self.runtime.config.limits.shutdown_grace
        connections = self.services.connections
        deadline = time.monotonic() + grace
        while connections.total > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if connections.total > 0:
            self.log.info("closing_connections", remaining=connections.total)
            self.closing.set()
            deadline = time.monotonic() + FORCED_CLOSE_WAIT
            while connections.total > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.runner is not None:
            self.runner.stop(timeout=FORCED_CLOSE_WAIT)
        self.log.info("stopped", remaining=connections.total)


def drop_privileges(config: Config, log: EventLog | None = None) -> None:
    """Started as root: become [server] user (its groups, then its gid, then its
    uid), after making data_dir and the log file its own. Refuses to go on as
    root when the switch does not take. Not root: nothing to do."""
    if os.geteuid() != 0:
        return
    name = config.server.user
    if not name:
        if log is not None:
            log.warning("running_as_root", reason="[server] user is not set")
        return
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise StartError(f"[server] user: no such user {name!r}") from None
    _give_to(config.server.data_dir, account.pw_uid, account.pw_gid)
    if config.server.log not in ("stderr", "syslog") and os.path.exists(config.server.log):
        os.chown(config.server.log, account.pw_uid, account.pw_gid)
    try:
        os.initgroups(name, account.pw_gid)      # its supplementary groups, e.g. ssl-cert
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    except OSError as error:
        raise StartError(f"[server] user: cannot switch to {name}: {error.strerror}") from None
    if os.geteuid() == 0 or os.getuid() == 0:
        raise StartError(f"[server] user: still root after switching to {name}; refusing to run")
    try:
        os.setuid(0)
    except PermissionError:
        return                                   # as it should be: no way back to root
    raise StartError(f"[server] user: could regain root after switching to {name}; refusing")


def _give_to(data_dir: Path, uid: int, gid: int) -> None:
    """chown -R data_dir to the mail user when it is not theirs already."""
    if data_dir.stat().st_uid == uid:
        return
    for folder, dirs, files in os.walk(data_dir):
        for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
            os.lchown(name, uid, gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def serve(config_path: Path, runtime: Runtime) -> int:
    configure_logging(runtime.config)
    try:
        return Daemon(config_path, runtime).run()
    finally:
        stop_logging()

