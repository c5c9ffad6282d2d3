"""The process: binding every listener, switching user, running until a signal,
reloading, and stopping cleanly (stop accepting, let sessions finish, close the rest)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import faulthandler
import os
import pwd
import signal
import stat
import threading
import time
from pathlib import Path

from ..config.schema import Config, require_listener
from ..core.errors import ConfigError
from ..log import sink
from ..log.events import EventLog
from ..outbound.runner import QueueRunner
from ..session.runtime import Runtime, Services, load_runtime
from ..store import datadir
from ..store.datadir import DataDirError, ReloadStatus, ServerLock
from .listeners import MailServer, SessionHandler

FORCED_CLOSE_WAIT = 5.0      # after the grace period: time for handlers to say 421 and go


class StartError(Exception):
    """The server cannot start (a port in use, a folder it cannot create)."""


class Daemon:
    """Every listener of one config, and the queue runner, in one process."""

    def __init__(self, config_path: Path, runtime: Runtime, pid_file: Path | None = None,
                 config_source: str = ""):
        self.config_path = config_path
        self.config_source = config_source   # how the INI was found (cli.common.ConfigChoice)
        self.runtime = runtime            # replaced whole by a reload; sessions keep theirs
        self._services: Services | None = None  # made after the switch to [server] user
        self.closing = threading.Event()
        self.log = EventLog("daemon")
        self.pid_file = pid_file or (Path(runtime.config.server.pid_file)
                                     if runtime.config.server.pid_file else None)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._servers: dict[tuple, MailServer] = {}
        self.runner: QueueRunner | None = None
        self._lock = ServerLock(runtime.config.server.data_dir)
        self._reload_sequence = 0

    @property
    def services(self) -> Services:
        """The shared objects; only after prepare_storage (as the mail user)."""
        if self._services is None:
            raise RuntimeError("services used before prepare_storage()")
        return self._services

    # ------------------------------------------------------------ start

    def prepare_storage(self) -> None:
        """Folders, leftovers of a crash, listings: done as the mail user, so
        everything made belongs to it and no symlink it planted is followed as root."""
        cfg = self.runtime.config
        try:
            self._services = Services.create(cfg)
        except OSError as error:
            raise StartError(f"[server] data_dir: cannot use {cfg.server.data_dir}: "
                             f"{error.strerror} ({error.filename})") from None
        if cfg.listen.pop3 or cfg.listen.pop3s:
            started = time.monotonic()
            self.services.store.warm(cfg.mailboxes)      # first POP3 logins find lists ready
            self.log.info("mailboxes_listed", count=len(cfg.mailboxes),
                          ms=round((time.monotonic() - started) * 1000))
        stale = self.services.store.clean_stale_temps()
        orphans = self.services.spool.clean_orphans()
        if stale or orphans:
            self.log.info("cleaned", stale_temps=stale, queue_orphans=orphans)

    def bind(self, listeners: list | None = None,
             runtime: Runtime | None = None) -> list[MailServer]:
        """Open the listening sockets (all of the config's, or those given): all of
        them, or none (a failure closes those already opened)."""
        runtime = runtime or self.runtime
        opened: dict[tuple, MailServer] = {}
        for kind, address in listeners if listeners is not None else \
                runtime.config.listen.listeners():
            try:
                opened[(kind, address)] = MailServer(kind, address, self, SessionHandler)
            except OSError as error:
                for server in opened.values():
                    server.server_close()
                raise StartError(f"[listen] {kind}: cannot listen on {address}: "
                                 f"{error.strerror or error}{self._port_holder(error)}") from None
        self._servers.update(opened)
        return list(opened.values())

    def _port_holder(self, error: OSError) -> str:
        """Who has the port, when we can tell: the server of the pid file, usually."""
        if error.errno != errno.EADDRINUSE:
            return ""
        pid = _pid_in(self.pid_file) if self.pid_file else None
        if pid is not None and pid != os.getpid():
            return f" (the mailbox_appliance server with pid {pid}, from {self.pid_file}, runs)"
        return " (another program listens there; `ss -ltnp` shows which)"

    def start(self, servers: list[MailServer]) -> None:
        for server in servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                             name=f"accept {server.label}", daemon=True).start()
            print(f"listening {server.kind} {server.bound}", flush=True)
            self.log.info("listening", kind=server.kind, address=server.bound)

    # ------------------------------------------------------------ run, reload and stop

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (SIGHUP reloads); return the exit code."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        # `kill -USR1 <pid>`: every thread's stack on stderr, for a server that seems stuck
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            require_listener(self.runtime.config)
        except ConfigError as error:
            raise StartError(error.one_line()) from None
        make_data_dir(self.runtime.config)     # refuses a folder that is not the server's
        self._lock_data_dir()                  # refuses a second server on the same data_dir
        servers = self.bind()                  # ports below 1024 need root
        self._write_pid_file()
        drop_privileges(self.runtime.config, self.log)
        server = self.runtime.config.server
        try:
            sink.configure(server.log, server.log_level)  # opened as the mail user
        except OSError as error:
            # Mail matters more than the log: serve on, logging to stderr.
            sink.configure("stderr", server.log_level)
            where = f" ({error.filename})" if error.filename and \
                str(error.filename) != server.log else ""
            self.log.error("log_unavailable", key="[server] log",
                           error=f"cannot open {server.log}{where}: {error.strerror or error}",
                           using="stderr")
        self.log.info("starting", config=str(self.config_path), found=self.config_source,
                      user=_user_name())
        if os.geteuid() == 0:
            self.log.warning("running_as_root", reason="[server] user is not set")
        self.prepare_storage()
        self.start(servers)
        self.runner = QueueRunner(self)
        self.runner.start()
        self.log.info("started", pid=os.getpid(), config=str(self.config_path),
                      hostname=self.runtime.hostname, user=_user_name())
        self._write_reload_status(True, "started")
        while not self._stop.is_set():
            self._stop.wait(0.2)
            if self._reload.is_set():
                self._reload.clear()
                try:
                    self.reload()
                except Exception as error:      # a reload must never take the server down
                    self.log.exception("reload_failed", kept="the running config")
                    self._answer_reload(False, f"internal error: {type(error).__name__}")
        self.stop()
        return 0

    def _on_stop_signal(self, signum, frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    def _on_reload_signal(self, signum, frame) -> None:
        self._reload.set()

    def reload(self) -> bool:
        """Re-read the INI. A valid config replaces the old one for new sessions,
        listeners are opened and closed to match, the log is reopened; an
        invalid one is refused with its error logged and the old one kept.
        New listeners are bound before anything changes, so a port that cannot
        be had leaves the server exactly as it was."""
        try:
            runtime = load_runtime(self.config_path)
            require_listener(runtime.config)
        except ConfigError as error:
            return self._refuse_reload(error.one_line())
        old = self.runtime
        wanted = set(runtime.config.listen.listeners())
        added = [key for key in runtime.config.listen.listeners() if key not in self._servers]
        try:
            new_servers = self.bind(added, runtime)
        except StartError as error:
            return self._refuse_reload(str(error))
        if runtime.config.server.log != old.config.server.log or \
                runtime.config.server.log_level != old.config.server.log_level:
            try:
                sink.configure(runtime.config.server.log, runtime.config.server.log_level)
            except OSError as error:
                for key in added:
                    self._servers.pop(key).server_close()
                return self._refuse_reload(f"[server] log: cannot open "
                                           f"{runtime.config.server.log}: "
                                           f"{error.strerror or error}", key="[server] log")
        else:
            sink.reopen()
        if runtime.config.server.data_dir != old.config.server.data_dir:
            self.log.warning("reload_partial", key="[server] data_dir",
                             reason="a new data_dir takes effect at the next restart")
        self.runtime = runtime                       # one assignment: atomic for readers
        self.start(new_servers)
        for key in [key for key in self._servers if key not in wanted]:
            server = self._servers.pop(key)
            server.shutdown()
            server.server_close()
            self.log.info("closed_listener", kind=key[0], address=str(key[1]))
        self.log.info("reloaded", config=str(self.config_path),
                      listeners=len(self._servers), mailboxes=len(runtime.config.mailboxes),
                      domains=len(runtime.config.domains))
        self._answer_reload(True, f"{self.config_path}: {len(runtime.config.domains)} domains, "
                                  f"{len(runtime.config.mailboxes)} mailboxes, "
                                  f"{len(self._servers)} listeners")
        return True

    def _refuse_reload(self, problem: str, key: str | None = None) -> bool:
        self.log.error("reload_failed", key=key, error=problem, kept="the running config")
        self._answer_reload(False, problem)
        return False

    def _answer_reload(self, ok: bool, message: str) -> None:
        """Tell `mailbox_appliance.py reload` (which waits for this file) what happened."""
        self._reload_sequence += 1
        self._write_reload_status(ok, message)

    def _write_reload_status(self, ok: bool, message: str) -> None:
        status = ReloadStatus(pid=os.getpid(), sequence=self._reload_sequence, ok=ok,
                              message=message, time=time.time())
        try:
            status.write(self.runtime.config.server.data_dir)
        except OSError as error:
            self.log.warning("reload_status_unwritable", error=str(error))

    def _lock_data_dir(self) -> None:
        config = self.runtime.config
        owner = None
        if os.geteuid() == 0 and config.server.user:
            account = pwd.getpwnam(config.server.user)     # make_data_dir checked it exists
            owner = (account.pw_uid, account.pw_gid)
        try:
            self._lock.acquire(owner)
        except DataDirError as error:
            raise StartError(f"[server] data_dir: {error}") from None
        except OSError as error:
            raise StartError(f"[server] data_dir: cannot lock {self._lock.path}: "
                             f"{error.strerror or error}") from None

    def close_listeners(self) -> None:
        for server in self._servers.values():
            server.server_close()
        self._servers.clear()

    def stop(self) -> None:
        """Stop accepting; idle sessions are told 421 / -ERR at once (DESIGN 6,
        Shutdown), those with a message in flight get `shutdown_grace` to
        finish; then the rest are told too."""
        connections = self.services.connections
        connections.drain()          # newcomers refused, idle sessions end within a poll
        # Every accept loop takes up to its poll interval to notice: stop them side by side.
        stoppers = [threading.Thread(target=server.shutdown, daemon=True)
                    for server in self._servers.values()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.close_listeners()
        grace = self.runtime.config.limits.shutdown_grace
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
        self.services.check_workers.stop()
        self._remove_pid_file()
        self._lock.release()
        self.log.info("stopped", remaining=connections.total)

    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        try:
            self._make_pid_folder(self.pid_file.parent)
            problem = self._pid_file_problem()
            if problem:
                raise StartError(f"[server] pid_file: {problem}")
            # Written as root: never through a symlink, never over another file.
            fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        except OSError as error:
            raise StartError(f"[server] pid_file: cannot write {self.pid_file}: "
                             f"{error.strerror}") from None

    def _pid_file_problem(self) -> str | None:
        """Why the pid file must not be written, or None. Root writes it: a folder
        that someone else can write lets them point the name at any file."""
        assert self.pid_file is not None
        folder = self.pid_file.parent
        info = folder.stat()
        trusted = {0, os.geteuid()}
        if self.runtime.config.server.user:
            try:
                trusted.add(pwd.getpwnam(self.runtime.config.server.user).pw_uid)
            except KeyError:
                pass
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in trusted:
            return (f"{folder} can be written by other users (mode "
                    f"{stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}); put the pid "
                    "file in a folder of its own, such as /run/mailbox-appliance/")
        try:
            existing = os.lstat(self.pid_file)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(existing.st_mode) or existing.st_size > 32 or \
                not self.pid_file.read_text(errors="replace").strip().isdigit():
            return f"{self.pid_file} exists and is not a pid file; refusing to overwrite it"
        return None

    def _make_pid_folder(self, folder: Path) -> None:
        """A pid file's folder that we create is the mail user's, so that the server
        can remove its pid file at exit (e.g. /run/mailbox-appliance/)."""
        if folder.exists():
            return
        folder.mkdir(mode=0o755, parents=True)
        user = self.runtime.config.server.user
        if os.geteuid() == 0 and user:
            account = pwd.getpwnam(user)
            os.lchown(folder, account.pw_uid, account.pw_gid)

    def _remove_pid_file(self) -> None:
        if self.pid_file is None:
            return
        try:
            if self.pid_file.read_text().strip() == str(os.getpid()):
                self.pid_file.unlink()
        except OSError:
            pass          # a folder the mail user cannot write: the init script cleans up


def _pid_in(pid_file: Path) -> int | None:
    """The pid in a pid file, when that process is alive and runs this program."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"mailbox_appliance" in command else None


def _import_before_dropping_root(config: Config) -> None:
    """Load the modules used later on, while the interpreter's files are surely
    readable: after switching user, a Python installed under a private home
    (pyenv under /root) could no longer import them."""
    # International domains: the idna codec imports stringprep and unicodedata,
    # and looks up the punycode codec (encodings.punycode) on first use. Using
    # both ways once loads all of them and caches the codec look-ups.
    import encodings.idna  # noqa: F401
    import encodings.punycode  # noqa: F401
    "bücher.example".encode("idna").decode("idna")
    if config.relay.mode == "mx":
        try:
            import dns.nameserver  # noqa: F401
            import dns.resolver  # noqa: F401
        except ImportError:
            pass                           # reported when an MX look-up is needed


def make_data_dir(config: Config) -> None:
    """Create data_dir (as root, before the switch) and give it to [server] user."""
    data_dir = config.server.data_dir
    problem = datadir.refusal(data_dir)
    if problem:
        raise StartError(f"[server] data_dir: {problem}")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StartError(f"[server] data_dir: cannot create {data_dir}: {error.strerror}") from None
    if not os.access(data_dir, os.W_OK):
        why = "is on a read-only file system" if _read_only(data_dir) else "is not writable"
        raise StartError(f"[server] data_dir: {data_dir} {why}")
    if os.geteuid() == 0 and config.server.user:
        try:
            account = pwd.getpwnam(config.server.user)
        except KeyError:
            raise StartError(f"[server] user: no such user {config.server.user!r}") from None
        _give_to(data_dir, account.pw_uid, account.pw_gid)


def drop_privileges(config: Config, log: EventLog | None = None) -> None:
    """Started as root: become [server] user (its groups, then its gid, then its
    uid). Refuses to go on as root when the switch does not take. Not root, or
    no user set: nothing to do (serve logs a warning for root)."""
    if os.geteuid() != 0 or not config.server.user:
        return
    name = config.server.user
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise StartError(f"[server] user: no such user {name!r}") from None
    _import_before_dropping_root(config)
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
    """Give data_dir and what the server owns inside it (never anything else)
    to the mail user, where they are someone else's. Symlinks are changed
    themselves, never followed."""
    tops = [data_dir, *datadir.owned_paths(data_dir)]
    if all(top.lstat().st_uid == uid for top in tops):
        return
    os.lchown(data_dir, uid, gid)
    for top in tops[1:]:
        os.lchown(top, uid, gid)
        if top.is_dir() and not top.is_symlink():
            for folder, dirs, files in os.walk(top):     # does not follow symlinks
                for name in dirs + files:
                    os.lchown(os.path.join(folder, name), uid, gid)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena; with a thread per connection
    that multiplies the memory a busy server keeps. Two arenas are plenty here."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.mallopt(-8, arenas)                 # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def serve(config_path: Path, runtime: Runtime, pid_file: Path | None = None,
          config_source: str = "") -> int:
    """Run the daemon; the log is set up once it runs as the mail user."""
    limit_malloc_arenas()
    try:
        return Daemon(config_path, runtime, pid_file, config_source).run()
    finally:
        sink.stop()

