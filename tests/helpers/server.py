"""A real `mailbox_appliance.py serve` on loopback: its config, the process, and
what it leaves in its data_dir (Maildirs, the queue, the log).

Servers listen on port 0 (any free port) and report the ports they got on
stdout (`listening smtp 127.0.0.1:41234`), so tests never race for ports.
Every process started here is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .cli import SCRIPT, run_cli
from .ini import SERVER_ALIASES, config_text
from .waiting import wait_until

START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0
LISTENING = re.compile(r"^listening (\S+) (\S+):(\d+)$")


def server_config(folder: Path, *, listen: dict[str, str] | None = None,
                  trusted: str = "127.0.0.0/8, ::1/128", plaintext_auth: str = "local",
                  log_level: str = "debug", aliases: str = SERVER_ALIASES, **options: Any) -> str:
    """config_text() for a server living in `folder`: data/ and server.log there, one
    SMTP listener on 127.0.0.1 port 0 unless `listen` says otherwise, loopback
    trusted, debug logging, the server tests' aliases. `options` go to config_text()."""
    options.setdefault("data_dir", folder / "data")
    options.setdefault("log", folder / "server.log")
    return config_text(listen={"smtp": "127.0.0.1:0"} if listen is None else listen,
                       trusted=trusted, plaintext_auth=plaintext_auth, log_level=log_level,
                       aliases=aliases, **options)


def write_server_config(folder: Path, **options: Any) -> Path:
    """server_config() written to `folder`/server.ini."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "server.ini"
    path.write_text(server_config(folder, **options))
    return path


def new_server(folder: Path, *, python: str = sys.executable, **options: Any) -> ServerProcess:
    """A ServerProcess for server_config(folder, **options), not started yet."""
    return ServerProcess(folder=folder, ini=write_server_config(folder, **options),
                         options=options, python=python)


@dataclass
class ServerProcess:
    """A real `mailbox_appliance.py serve` in a folder of its own."""
    folder: Path
    ini: Path
    options: dict[str, Any] = field(default_factory=dict)   # what server_config() was given
    python: str = sys.executable       # the interpreter to run the server with
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)     # the first port of each kind
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)

    # ---- what it leaves on disk
    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        """Where server_config() puts the log (unless a test moved it)."""
        return self.folder / "server.log"

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def maildir(self, mailbox: str, sub: str = "new") -> Path:
        return self.data / "mail" / mailbox / sub

    def maildir_files(self, mailbox: str, sub: str) -> list[Path]:
        """The files in one Maildir folder (new, cur or tmp), by name."""
        folder = self.maildir(mailbox, sub)
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def messages(self, mailbox: str) -> list[bytes]:
        """Contents of new/ and cur/, oldest first."""
        found = self.maildir_files(mailbox, "new") + self.maildir_files(mailbox, "cur")
        return [p.read_bytes() for p in sorted(found, key=lambda p: p.name)]

    def all_messages(self) -> dict[str, list[bytes]]:
        """Every Maildir's messages, by mailbox."""
        root = self.data / "mail"
        if not root.is_dir():
            return {}
        return {box.name: self.messages(box.name) for box in sorted(root.iterdir())
                if box.is_dir()}

    def queue_files(self) -> list[str]:
        entries = self.data / "queue" / "entries"
        return sorted(p.name for p in entries.iterdir()) if entries.is_dir() else []

    def queue_ids(self) -> list[str]:
        return [name[:-4] for name in self.queue_files() if name.endswith(".env")]

    def queue_entries(self) -> dict[str, tuple[bytes, dict]]:
        """{id: (.msg bytes, .env JSON)}; every .msg must have its .env and back."""
        folder = self.data / "queue" / "entries"
        names = self.queue_files()
        ids = {name.rsplit(".", 1)[0] for name in names}
        assert names == sorted([f"{i}.env" for i in ids] + [f"{i}.msg" for i in ids]), names
        return {i: ((folder / f"{i}.msg").read_bytes(),
                    json.loads((folder / f"{i}.env").read_text("utf-8"))) for i in ids}

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log, once `text` is in it."""
        def logged() -> str:
            log = self.log_text()
            return log if text in log else ""
        return wait_until(logged, timeout, what=f"{text!r} in the log",
                          detail=lambda: self.log_text()[-3000:])

    # ---- its config and command line
    def reconfigure(self, **changes: Any) -> None:
        """Rewrite the INI with these server_config() options changed (a running
        server reads it at SIGHUP)."""
        self.options.update(changes)
        self.ini.write_text(server_config(self.folder, **self.options))

    def cli(self, *args: str,
            stdin: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """`mailbox_appliance.py -c INI ARGS...` in the server's folder."""
        return run_cli(*args, config=self.ini, stdin=stdin, cwd=self.folder)

    # ---- the process
    def start(self, expect: int | None = None) -> ServerProcess:
        """Start and wait until every listener is reported (or `expect` of them)."""
        wanted = expect if expect is not None else self._listener_count()
        process = subprocess.Popen(
            [self.python, str(SCRIPT), "-c", str(self.ini), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.folder)
        self.process, self.ports = process, {}
        listening: list[tuple[str, int]] = []
        # Both pipes are read to their end in threads: a full pipe would block the server.
        readers = [threading.Thread(target=self._drain, daemon=True,
                                    args=(process.stdout, self.stdout_lines, listening)),
                   threading.Thread(target=self._drain, daemon=True,
                                    args=(process.stderr, self.stderr_lines, None))]
        for reader in readers:
            reader.start()
        try:
            wait_until(lambda: len(listening) >= wanted or process.poll() is not None,
                       START_TIMEOUT, what=f"{wanted} listeners reported")
        except AssertionError:
            pass
        for kind, port in list(listening):
            self.ports.setdefault(kind, port)
        if len(listening) < wanted:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            for reader in readers:          # what it said before it died
                reader.join(2)
            self.stop()
            error = "\n".join(self.stderr_lines)[-2000:]
            raise RuntimeError(f"server did not start ({len(listening)} of {wanted} "
                               f"listeners): {error}")
        return self

    @staticmethod
    def _drain(stream: IO[str], lines: list[str],
               listening: list[tuple[str, int]] | None) -> None:
        try:
            for line in stream:
                lines.append(line.rstrip("\n"))
                if listening is not None and (match := LISTENING.match(line.strip())):
                    listening.append((match.group(1), int(match.group(3))))
        except (OSError, ValueError):
            pass                            # the stream was closed by stop()

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
        assert self.process is not None, "not started"
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
        # Closed here, not left to the readers: a filter's background job may hold
        # the pipes open long after the server has gone.
        for stream in (process.stdout, process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass
        return process.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
