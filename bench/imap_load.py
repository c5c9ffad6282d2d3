#!/usr/bin/env python3
"""IMAP benchmark: mailbox_appliance and (when installed) Dovecot serving the
same Maildirs (Dovecot a copy of them), side by side, with one lean
raw-socket client.

Measures, for each server:
  * LOGIN + SELECT of a 10,000-message INBOX: the first after the server
    starts (cold), then the median of warm ones, in ms;
  * UID FETCH 1:* (FLAGS) of those 10,000, in ms;
  * FETCH 1:* (ENVELOPE) of those 10,000, the first time and the second, in ms;
  * UID SEARCH TEXT for a word that one message contains, in ms;
  * FETCH BODY.PEEK[] of 1,000 x 10 KB messages, one FETCH per message, with
    1 and 8 concurrent sessions (msgs/s);
  * ours only: the RSS with 50 idle sessions (logged in, INBOX selected, in IDLE).

    python3 bench/imap_load.py                 # both servers if Dovecot is installed
    python3 bench/imap_load.py --only ours

Dovecot is started from bench/dovecot/ (imap.conf includes dovecot.conf) on a
free loopback port and stopped by its master's PID (apt install
dovecot-imapd; needs root). Everything listens on loopback only.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.mailservers import PASSWORD, Dovecot, Ours, rss_mb  # noqa: E402
from lib.store.maildir import MaildirStore  # noqa: E402

BIG = 10_000
SMALL = 1_000
SESSIONS = 8
IDLE_SESSIONS = 50
NEEDLE = "quetzalcoatlus"             # the word of UID SEARCH TEXT, in one message only
LINE = b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJ abcdef.\n"
LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


# ---------------------------------------------------------------- the client

class Imap:
    """A lean IMAP client: bulk reads, literals skipped by length."""

    def __init__(self, port: int, user: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.count = 0
        self._line()                                    # the greeting
        self.command(f'LOGIN {user} "{PASSWORD}"')

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += chunk

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._fill()
        line = bytes(self.buf[self.pos:end + 2])
        self.pos = end + 2
        return line

    def _octets(self, count: int) -> bytes:
        while len(self.buf) - self.pos < count:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + count])
        self.pos += count
        return data

    def send(self, text: str) -> bytes:
        self.count += 1
        tag = b"t%d" % self.count
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        return tag

    def response(self, tag: bytes) -> tuple[int, int]:
        """Read up to the tagged OK: (untagged lines, literal octets)."""
        lines = octets = 0
        while True:
            line = self._line()
            if line.startswith(tag + b" "):
                if line[len(tag) + 1:len(tag) + 3] != b"OK":
                    raise RuntimeError(line.decode(errors="replace"))
                return lines, octets
            lines += 1
            if (literal := LITERAL.search(line)) is not None:
                octets += len(self._octets(int(literal[1])))

    def command(self, text: str) -> tuple[int, int]:
        return self.response(self.send(text))

    def logout(self) -> None:
        try:
            self.command("LOGOUT")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.sock.close()


# ---------------------------------------------------------------- test data

def message(number: int, size: int, word: str = "") -> bytes:
    header = (f"From: Sender {number % 97} <sender{number % 97}@example.net>\n"
              f"To: Alice <alice@example.org>, bob{number % 13}@example.org\n"
              f"Cc: \"Carol, C.\" <carol@example.com>\n"
              f"Subject: Benchmark message {number} about topic {number % 31}\n"
              f"Date: Mon, 1 Dec 2025 {number % 24:02d}:{number % 60:02d}:00 +0000\n"
              f"Message-ID: <{number}.bench@example.net>\n"
              f"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n")
    body = LINE * max(1, size // len(LINE))
    return header.encode() + body + (f"{word}\n".encode() if word else b"")


def fill_mailboxes(data_dir: Path) -> list[str]:
    """Deliver the benchmark mailboxes through our own Maildir store."""
    store = MaildirStore(data_dir / "mail", "bench.example")
    for number in range(BIG):
        store.deliver(["big10k"], message(number, 2_000, NEEDLE if number == 6_789 else ""))
    for n in range(SESSIONS):
        for number in range(SMALL):
            store.deliver([f"small{n}"], message(number, 10 * 1024))
    return ["big10k", *(f"small{n}" for n in range(SESSIONS))]


# ---------------------------------------------------------------- measurements

def ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def login_select(port: int) -> tuple[float, Imap]:
    started = time.perf_counter()
    client = Imap(port, "big10k")
    client.command("SELECT INBOX")
    return ms(started), client


def fetch_bodies(port: int, mailbox: str, results: list, lock: threading.Lock) -> None:
    client = Imap(port, mailbox)
    client.command("SELECT INBOX")
    octets = 0
    started = time.perf_counter()
    for number in range(1, SMALL + 1):
        octets += client.command(f"FETCH {number} (BODY.PEEK[])")[1]
    elapsed = time.perf_counter() - started
    client.logout()
    with lock:
        results.append((SMALL, octets, elapsed))


def parallel_fetch(port: int, mailboxes: list[str]) -> dict:
    results: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=fetch_bodies, args=(port, m, results, lock))
               for m in mailboxes]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    wall = time.perf_counter() - started
    messages = sum(r[0] for r in results)
    return {"sessions": len(mailboxes), "msgs_per_s": round(messages / wall, 1),
            "mb_per_s": round(sum(r[1] for r in results) / wall / 2**20, 1)}


def idle_rss(server, mailboxes: list[str]) -> float:
    """RSS with IDLE_SESSIONS logged in, INBOX selected (mailboxes in turn), in IDLE."""
    clients = []
    try:
        for n in range(IDLE_SESSIONS):
            client = Imap(server.port, mailboxes[n % len(mailboxes)])
            client.command("SELECT INBOX")
            client.send("IDLE")
            if not client._line().startswith(b"+"):
                raise RuntimeError("IDLE refused")
            clients.append(client)
        time.sleep(2)
        return round(rss_mb(server.pids), 1)
    finally:
        for client in clients:
            client.sock.sendall(b"DONE\r\n")
            client.logout()


def measure(server, mailboxes: list[str], repeat: int) -> dict:
    server.start()
    try:
        result: dict = {}
        result["login_select_cold_ms"], client = login_select(server.port)
        started = time.perf_counter()
        assert client.command("UID FETCH 1:* (FLAGS)")[0] == BIG
        result["fetch_flags_cold_ms"] = ms(started)
        started = time.perf_counter()
        assert client.command("FETCH 1:* (ENVELOPE)")[0] == BIG
        result["fetch_envelope_first_ms"] = ms(started)
        started = time.perf_counter()
        client.command("FETCH 1:* (ENVELOPE)")
        result["fetch_envelope_second_ms"] = ms(started)
        client.logout()
        warm, flags, search = [], [], []
        for _ in range(repeat):
            elapsed, client = login_select(server.port)
            warm.append(elapsed)
            started = time.perf_counter()
            client.command("UID FETCH 1:* (FLAGS)")
            flags.append(ms(started))
            started = time.perf_counter()
            client.command(f"UID SEARCH TEXT {NEEDLE}")
            search.append(ms(started))
            client.logout()
        result["login_select_warm_ms"] = statistics.median(warm)
        result["fetch_flags_warm_ms"] = statistics.median(flags)
        result["uid_search_text_ms"] = statistics.median(search)
        small = [m for m in mailboxes if m.startswith("small")]
        for label, boxes in (("fetch_body_1", small[:1]), ("fetch_body_8", small)):
            runs = [parallel_fetch(server.port, boxes) for _ in range(repeat)]
            result[label] = sorted(runs, key=lambda r: r["msgs_per_s"])[len(runs) // 2]
        if isinstance(server, Ours):
            result["rss_50_idle_mb"] = idle_rss(server, mailboxes)
    finally:
        server.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", choices=("ours", "dovecot"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="imap-bench-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        print(f"filling Maildirs in {folder} ...", flush=True)
        mailboxes = fill_mailboxes(folder / "ours" / "data")
        servers: list = []
        if args.only != "dovecot":
            servers.append(Ours(folder / "ours", mailboxes, "imap"))
        if args.only != "ours":
            if Dovecot.available("imap"):
                copy = folder / "dovecot"
                shutil.copytree(folder / "ours" / "data" / "mail", copy / "data" / "mail")
                # dovecot's mail processes run as nobody
                subprocess.run(["chown", "-R", "65534:65534", str(copy / "data")], check=True)
                servers.append(Dovecot(copy, mailboxes, "imap"))
            else:
                print("dovecot-imapd not installed (or not root): measuring only ours")
        results = {}
        for server in servers:
            print(f"measuring {server.name} ...", flush=True)
            results[server.name] = measure(server, mailboxes, args.repeat)
            print(json.dumps(results[server.name], indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
