"""Test harness: real server processes on loopback, test-time certificates, configs.

Servers listen on port 0 (any free port) and report the ports they got on
stdout (`listening smtp 127.0.0.1:41234`), so tests never race for ports.
Every process started here is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .support import HASH, PASSWORD, ROOT

SCRIPT = ROOT / "mailbox_appliance.py"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0
LISTENING = re.compile(r"^listening (\S+) (\S+):(\d+)$")


def make_certificate(folder: Path, hostname: str = "mail.example.org") -> tuple[Path, Path]:
    """A self-signed certificate and key for `hostname` (and 127.0.0.1), made now."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
         f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return cert, key


DEFAULT_MAP = """
[domains]
example.org = *
example.net = *

[mailboxes]
bhayden = {hash}
alice = {hash}

[aliases]
postmaster = bhayden
root = bhayden
sales@example.net = alice, bhayden
@example.net = bhayden
"""


def config_text(folder: Path, *, listen: dict[str, str] | None = None,
                trusted: str = "127.0.0.0/8, ::1/128", tls: tuple[Path, Path] | None = None,
                plaintext_auth: str = "local", extra: str = "", limits: str = "",
                address_map: str = DEFAULT_MAP, log_level: str = "debug",
                relay: str = "") -> str:
    listen = listen if listen is not None else {"smtp": "127.0.0.1:0"}
    tls_lines = f"cert = {tls[0]}\nkey = {tls[1]}\n" if tls else ""
    return textwrap.dedent(f"""\
        [server]
        hostname = mail.example.org
        data_dir = {folder / 'data'}
        log = {folder / 'server.log'}
        log_level = {log_level}

        [listen]
        """) + "".join(f"{kind} = {value}\n" for kind, value in listen.items()) + \
        f"\n[tls]\n{tls_lines}plaintext_auth = {plaintext_auth}\n" + \
        f"\n[limits]\n{textwrap.dedent(limits)}\n" + \
        f"\n[policy]\ntrusted_networks = {trusted}\n" + \
        (f"\n[relay]\n{textwrap.dedent(relay)}\n" if relay else "") + \
        textwrap.dedent(address_map).replace("{hash}", HASH) + textwrap.dedent(extra)


@dataclass
class ServerProcess:
    """A real `mailbox_appliance.py serve` in a folder of its own."""
    folder: Path
    ini: Path
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    python: str = sys.executable       # the interpreter to run the server with
    extra_args: tuple[str, ...] = ()   # after `serve`

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def maildir(self, mailbox: str, sub: str = "new") -> Path:
        return self.data / "mail" / mailbox / sub

    def messages(self, mailbox: str) -> list[bytes]:
        """Contents of new/ and cur/, oldest first."""
        found = []
        for sub in ("new", "cur"):
            folder = self.maildir(mailbox, sub)
            if folder.is_dir():
                found += [p for p in folder.iterdir() if p.is_file()]
        return [p.read_bytes() for p in sorted(found, key=lambda p: p.name)]

    def start(self, expect: int | None = None) -> ServerProcess:
        """Start and wait until every listener is reported (or `expect` of them)."""
        self.ports.clear()
        self.process = subprocess.Popen(
            [self.python, str(SCRIPT), "-c", str(self.ini), "serve", *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.folder)
        wanted = expect if expect is not None else self._listener_count()
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.ports) < wanted:
            if time.monotonic() > deadline or self.process.poll() is not None:
                if self.process.poll() is None:
                    self.process.kill()
                error = self.process.stderr.read()[:2000]
                self.stop()
                raise RuntimeError(f"server did not start: {error}")
            line = self.process.stdout.readline()
            if not line:
                continue
            self.stdout_lines.append(line.rstrip("\n"))
            match = LISTENING.match(line.strip())
            if match:
                kind, port = match.group(1), int(match.group(3))
                self.ports.setdefault(kind, port)
        threading.Thread(target=self._drain, args=(self.process.stdout, self.stdout_lines),
                         daemon=True).start()
        threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr_lines),
                         daemon=True).start()
        return self

    @staticmethod
    def _drain(stream, lines: list[str]) -> None:
        """Read a pipe to its end (a full pipe would block the server)."""
        try:
            for line in stream:
                lines.append(line.rstrip("\n"))
        except (OSError, ValueError):
            pass

    def _listener_count(self) -> int:
        count, in_listen = 0, False
        for line in self.ini.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("["):
                in_listen = stripped == "[listen]"
            elif in_listen and "=" in stripped and not stripped.startswith(";"):
                count += len([v for v in stripped.split("=", 1)[1].split(",") if v.strip()])
        return count

    def port(self, kind: str = "smtp") -> int:
        return self.ports[kind]

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> int | None:
        """Stop by PID; return the exit code (killed after STOP_TIMEOUT)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Stuck: have it print every thread's stack (faulthandler, SIGUSR1)
                # into the test's output before it is killed.
                process.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                print("server did not stop; its threads:\n" + "\n".join(self.stderr_lines[-200:]))
                process.kill()
                process.wait(10)
        for stream in (process.stdout, process.stderr):
            try:
                stream.close()
            except Exception:
                pass
        return process.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_text()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log_text()[-3000:]}")


def new_server(folder: Path, **options) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "server.ini"
    ini.write_text(config_text(folder, **options))
    return ServerProcess(folder=folder, ini=ini)


__all__ = ["HASH", "PASSWORD", "ServerProcess", "config_text", "make_certificate", "new_server"]
