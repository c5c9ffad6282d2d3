"""The two servers the POP3 and IMAP benchmarks compare, over the same kind of
Maildirs in a folder of their own: mailbox_appliance and Dovecot 2.3
(bench/dovecot/). Each listens on a free loopback port and is stopped by its
PID; `pids` are what its RSS is summed over.

    server = Ours(folder, mailboxes, "imap")     # or "pop3"; Dovecot(...) alike
    server.start(); ... server.port ...; server.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lib.core import passwords  # noqa: E402

PASSWORD = "bench-pass"
START_SECONDS = 15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Ours:
    """mailbox_appliance with one `protocol` listener on a port it picks."""
    name = "ours"

    def __init__(self, folder: Path, mailboxes: list[str], protocol: str):
        self.protocol = protocol
        line = passwords.hash_password(PASSWORD)
        self.ini = folder / "ours.ini"
        self.ini.write_text(f"""[server]
hostname = mail.example.org
data_dir = {folder / 'data'}
log = {folder / 'ours.log'}
[listen]
{protocol} = 127.0.0.1:0
[limits]
max_connections_per_ip = 100
[domains]
example.org = *
[mailboxes]
""" + "".join(f"{m} = {line}\n" for m in mailboxes) + f"[aliases]\npostmaster = {mailboxes[0]}\n")
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(ROOT / "mailbox_appliance.py"),
                                         "-c", str(self.ini), "serve"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        assert self.process.stdout is not None
        started = self.process.stdout.readline()     # "listening imap 127.0.0.1:40123"
        if not started.startswith(f"listening {self.protocol} "):
            raise SystemExit("mailbox_appliance did not start")
        self.port = int(started.rsplit(":", 1)[1])

    @property
    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
            self.process = None


class Dovecot:
    """Dovecot from bench/dovecot/: dovecot.conf (POP3), plus imap.conf for IMAP."""
    name = "dovecot"

    def __init__(self, folder: Path, mailboxes: list[str], protocol: str):
        self.folder = folder
        pop3_port, imap_port = free_port(), free_port()
        self.port = imap_port if protocol == "imap" else pop3_port
        names = ("dovecot.conf", "imap.conf") if protocol == "imap" else ("dovecot.conf",)
        for name in names:
            conf = (HERE / "dovecot" / name).read_text()
            (folder / name).write_text(conf.replace("@FOLDER@", str(folder))
                                       .replace("@PORT@", str(pop3_port))
                                       .replace("@IMAP_PORT@", str(imap_port)))
        self.conf = folder / names[-1]
        # Dovecot's default scheme, as `doveadm pw` makes it: a login costs it
        # a SHA512-CRYPT check (mailbox_appliance pays an scrypt check).
        hashed = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD],
                                capture_output=True, text=True, check=True,
                                timeout=30).stdout.strip()
        (folder / "users").write_text("".join(f"{m}:{hashed}::::::\n" for m in mailboxes))
        (folder / "run").mkdir(exist_ok=True)
        self.master: int | None = None

    @staticmethod
    def available(protocol: str) -> bool:
        """Installed (dovecot-pop3d / dovecot-imapd), and we are root (it must be)."""
        return shutil.which("dovecot") is not None and os.geteuid() == 0 and \
            Path(f"/usr/lib/dovecot/{protocol}").exists()

    def start(self) -> None:
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, timeout=30)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                self.master = int((self.folder / "run" / "master.pid").read_text())
                return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise SystemExit("dovecot did not start")

    @property
    def pids(self) -> list[int]:
        """The master and every process below it (login, pop3/imap, auth ...)."""
        if self.master is None:
            return []
        found, waiting = [], [self.master]
        while waiting:
            pid = waiting.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    waiting += [int(child) for child in children.read_text().split()]
                except OSError:
                    pass
        return found

    def stop(self) -> None:
        if self.master is None:
            return
        os.kill(self.master, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{self.master}").exists():
            time.sleep(0.1)
        self.master = None
