"""The real scanner daemons for the integration tests: SpamAssassin's spamd,
rspamd and clamd, each with a private configuration in a folder of its own,
listening on 127.0.0.1 (and clamd on a unix socket in that folder too),
started in the foreground, waited for with a bound, and stopped by PID.

Nothing here reads or writes the system's state for these daemons (/etc,
/var/lib, /root): spamd gets the packaged rules but a private site config and
home, rspamd a whole config of its own (no redis, no controller, no DNS), clamd
a database directory holding only the EICAR signature written here. Also the
standard test messages: GTUBE, rspamd's GTUBE variants, EICAR."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .net import HOST, free_port
from .waiting import wait_until

START_TIMEOUT = 60.0     # each takes about a second on an idle box; far more on a busy one
STOP_TIMEOUT = 15.0
SPAMD_RULES = Path("/usr/share/spamassassin")     # the rules Debian ships (no sa-update)

# GTUBE (SpamAssassin and rspamd: reject); rspamd 3.4 knows variants for other
# actions, honoured only with `enable_test_patterns` (see its rspamd_check_gtube).
_GTUBE_TAIL = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE = "X" + _GTUBE_TAIL
GTUBE_ADD_HEADER = "Y" + _GTUBE_TAIL
GTUBE_REWRITE_SUBJECT = "Z" + _GTUBE_TAIL
GTUBE_NO_ACTION = "A" + _GTUBE_TAIL
# EICAR, put together at run time so this file is not itself a "virus" to a scanner.
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-" + "TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Eicar-Test-Signature"    # clamd adds .UNOFFICIAL: not an official database
CLAMD_STREAM_MAX = 4 * 1024 * 1024          # clamd's StreamMaxLength here: small, to test it


@dataclass
class Daemon:
    """One running daemon: its process, its folder, where it listens."""
    name: str
    folder: Path
    process: subprocess.Popen
    port: int                                # on 127.0.0.1
    socket_path: Path | None = None          # clamd's unix socket
    started_in: float = 0.0                  # seconds from start to its first answer
    log_files: list[Path] = field(default_factory=list)

    def log_tail(self, size: int = 3000) -> str:
        text = "".join(f"--- {path.name}\n{path.read_text(errors='replace')}"
                       for path in self.log_files if path.exists())
        return text[-size:]

    def stop(self) -> None:
        """SIGTERM to its PID, then SIGKILL to its process group if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)   # its own group: its children
                self.process.wait(STOP_TIMEOUT)


def _start(name: str, folder: Path, command: list[str], port: int, ready,
           socket_path: Path | None = None, logs: tuple[str, ...] = ()) -> Daemon:
    """Run `command` in `folder` in a session of its own (so the group can be
    killed if SIGTERM is not enough) and wait until `ready()` says yes."""
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"{command[0]} is not installed (.ci/run installs it)")
    output = folder / "output.log"
    began = time.monotonic()
    with open(output, "wb") as sink:
        process = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    daemon = Daemon(name, folder, process, port, socket_path,
                    log_files=[output, *(folder / log for log in logs)])
    try:
        wait_until(lambda: process.poll() is not None or _asks(ready), START_TIMEOUT,
                   interval=0.1, what=f"{name} answering", detail=daemon.log_tail)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{daemon.log_tail()}")
    except BaseException:
        daemon.stop()
        raise
    daemon.started_in = time.monotonic() - began
    return daemon


def public_folder(prefix: str) -> Path:
    """A fresh folder under /tmp that other users can traverse (pytest's own
    tmp folders are 0700); the caller removes it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    return folder


def _asks(ready) -> bool:
    try:
        return bool(ready())
    except OSError:
        return False


def _say(address: tuple[str, int] | str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` and read the answer until the daemon closes."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer


# ---------------------------------------------------------------- spamd

SPAMD_PLUGINS = """\
# Only the plugins that run rules on the message itself: Check runs the rules
# at all (without it nothing scores); nothing here asks the network.
loadplugin Mail::SpamAssassin::Plugin::Check
loadplugin Mail::SpamAssassin::Plugin::BodyEval
loadplugin Mail::SpamAssassin::Plugin::HeaderEval
loadplugin Mail::SpamAssassin::Plugin::MIMEEval
loadplugin Mail::SpamAssassin::Plugin::RelayEval
loadplugin Mail::SpamAssassin::Plugin::HTMLEval
loadplugin Mail::SpamAssassin::Plugin::URIEval
loadplugin Mail::SpamAssassin::Plugin::WLBLEval
loadplugin Mail::SpamAssassin::Plugin::MIMEHeader
loadplugin Mail::SpamAssassin::Plugin::ReplaceTags
"""
SPAMD_LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
required_score 5.0
"""


def start_spamd(folder: Path) -> Daemon:
    """spamd on 127.0.0.1 with one child, local tests only (-L), the packaged
    rules (-C) but a private site config and home, no user configs (-x).

    Started as root, spamd turns itself into `nobody` before it reads its
    config: `folder` must be one that other users can reach (see public_folder)."""
    site, home = folder / "site", folder / "home"
    site.mkdir(parents=True)
    home.mkdir()
    for made in (folder, site, home):
        made.chmod(0o755)
    (site / "init.pre").write_text(SPAMD_PLUGINS)
    (site / "local.cf").write_text(SPAMD_LOCAL_CF)
    port = free_port()
    command = ["spamd", "--listen", f"{HOST}:{port}", "--max-children", "1",
               "--min-children", "1", "--local", "--nouser-config",
               "--configpath", str(SPAMD_RULES), "--siteconfigpath", str(site),
               "--helper-home-dir", str(home), "--pidfile", str(folder / "spamd.pid"),
               "--syslog", "stderr"]
    return _start("spamd", folder, command, port,
                  lambda: _say((HOST, port), b"PING SPAMC/1.5\r\n\r\n").endswith(b"PONG\r\n"))


# ---------------------------------------------------------------- rspamd

RSPAMD_CONF = """\
# A private rspamd for tests: one normal worker on loopback, no controller, no
# proxy, no fuzzy storage, no redis, no modules but the test rules below; its
# DNS goes to a loopback port where nothing answers, so no lookup leaves the machine.
options {{
  pidfile = "{folder}/rspamd.pid";
  dbdir = "{folder}/db";
  hs_cache_dir = "{folder}/db";        # not /var/lib/rspamd
  tempdir = "{folder}/tmp";
  control_socket = "{folder}/db/rspamd.sock mode=0600";
  url_tld = "{folder}/tld.dat";          # a few TLDs: the full list takes seconds to compile
  filters = "";
  enable_test_patterns = true;           # the GTUBE variants for other actions
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{folder}/rspamd.log"; level = "info"; }}
actions {{
  reject = 15; rewrite_subject = 8; add_header = 6; greylist = 4;
  subject = "***SPAM*** %s";
}}
lua = "{folder}/rules.lua";
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; mime = true; count = 1; }}
"""
RSPAMD_RULES = """\
-- Test-only rules for what no GTUBE variant triggers: X-Test-Score adds that
-- score (greylist is 4 to 6), X-Test-Action forces an action (soft reject).
rspamd_config:register_symbol({
  name = 'TEST_SCORE', score = 1.0, group = 'test',
  callback = function(task)
    local wanted = task:get_header('X-Test-Score')
    if wanted then task:insert_result('TEST_SCORE', tonumber(wanted)) end
  end,
})
rspamd_config:register_symbol({
  name = 'TEST_ACTION', type = 'prefilter', priority = 10, group = 'test',
  callback = function(task)
    local wanted = task:get_header('X-Test-Action')
    if wanted then task:set_pre_result(wanted, 'test action ' .. wanted, 'test') end
  end,
})
"""


def start_rspamd(folder: Path) -> Daemon:
    """rspamd in the foreground (-f) with the private config above."""
    for sub in ("db", "tmp"):
        (folder / sub).mkdir(parents=True)
    port = free_port()
    (folder / "rspamd.conf").write_text(RSPAMD_CONF.format(folder=folder, port=port))
    (folder / "rules.lua").write_text(RSPAMD_RULES)
    (folder / "tld.dat").write_text("com\nnet\norg\nexample\n")
    command = ["rspamd", "-f", "-c", str(folder / "rspamd.conf")]
    if os.geteuid() == 0:
        command.append("--insecure")    # let it run as root here, in a private folder
    return _start("rspamd", folder, command, port, lambda: _http_ping(port),
                  logs=("rspamd.log",))


def _http_ping(port: int) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=5) as answer:
        return answer.read().strip() == b"pong"


# ---------------------------------------------------------------- clamd

CLAMD_CONF = """\
Foreground yes
LocalSocket {folder}/clamd.sock
TCPSocket {port}
TCPAddr 127.0.0.1
DatabaseDirectory {folder}/db
TemporaryDirectory {folder}/tmp
LogFile {folder}/clamd.log
PidFile {folder}/clamd.pid
StreamMaxLength {stream_max}
MaxThreads 4
"""


def start_clamd(folder: Path) -> Daemon:
    """clamd in the foreground with a database of one signature: EICAR, as an
    .ndb body signature (any file type, any offset), which matches the string
    wherever it stands in a message; the official databases cannot be had here."""
    for sub in ("db", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "db" / "eicar.ndb").write_text(
        f"{EICAR_SIGNATURE}:0:*:{EICAR.encode('ascii').hex()}\n")
    port = free_port()
    conf = folder / "clamd.conf"
    conf.write_text(CLAMD_CONF.format(folder=folder, port=port, stream_max=CLAMD_STREAM_MAX))
    sock = folder / "clamd.sock"

    def ready() -> bool:
        return all(_say(address, b"zPING\0") == b"PONG\0" for address in ((HOST, port), str(sock)))
    return _start("clamd", folder, ["clamd", "--config-file", str(conf)], port, ready,
                  socket_path=sock, logs=("clamd.log",))


# ---------------------------------------------------------------- scanners that fail

class SilentListener:
    """A scanner that is hung: it accepts connections, reads what comes and never
    answers. With `answer`, a scanner that garbles: once the client has sent
    everything (it closed its side, or paused 0.3 s) it gets `answer` and the
    connection closes. On 127.0.0.1, or on a unix socket at `socket_path`."""

    def __init__(self, socket_path: Path | None = None, answer: bytes | None = None) -> None:
        if socket_path is None:
            self.listener = socket.create_server((HOST, 0))
            self.port = self.listener.getsockname()[1]
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(socket_path))
            self.listener.listen()
            self.port = 0
        self.answer = answer
        self.received = 0              # octets read, over all connections
        self._open: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SilentListener:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self.listener.close()
        self._thread.join(5)
        for conn in self._open:
            conn.close()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self._open.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                if self.answer is not None and time.monotonic() - idle_since > 0.3:
                    break
                continue
            except OSError:
                return
            if not data:
                break           # the client closed its side
            self.received += len(data)
            idle_since = time.monotonic()
        if self.answer is not None and not self._stopping.is_set():
            try:
                conn.sendall(self.answer)
                conn.close()
            except OSError:
                pass
