#!/usr/bin/env python3
"""POP3 benchmark: mailbox_appliance and (when installed) Dovecot serving the
same Maildirs, side by side, with the same lean raw-socket client.

Measures, for each server:
  * login + STAT + LIST + UIDL on a 10,000-message mailbox (the first login
    after the server starts, then the median of warm ones), in ms;
  * RETR of 1,000 x 10 KB messages with 1 and 8 concurrent sessions (msgs/s, MB/s);
  * RETR of one 25 MB message with 1 and 8 concurrent sessions (MB/s);
  * 20 concurrent sessions on 20 mailboxes, each fetching everything (msgs/s);
  * the server's peak RSS.

    python3 bench/pop3_load.py                 # both servers if Dovecot is installed
    python3 bench/pop3_load.py --only ours

Both servers come from bench/mailservers.py: each on a free loopback port,
stopped by its PID; Dovecot from bench/dovecot/ (apt install dovecot-pop3d;
needs root). Everything listens on loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
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

LINE = b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJ abcdef.\n"


# ---------------------------------------------------------------- the client

class Pop3:
    """A lean POP3 client: bulk reads, so the client costs little CPU."""

    def __init__(self, port: int, user: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._line()
        self.command(f"USER {user}")
        self.command(f"PASS {PASSWORD}")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        if not line.startswith(b"+OK"):
            raise RuntimeError(line.decode(errors="replace"))
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self._line()

    def multiline(self, text: str) -> bytes:
        self.command(text)
        start = 0
        while True:
            end = self.buf.find(b"\r\n.\r\n", max(0, start - 4))
            if end >= 0 or self.buf.startswith(b".\r\n"):
                if self.buf.startswith(b".\r\n"):
                    body, self.buf = b"", self.buf[3:]
                else:
                    body, self.buf = self.buf[:end + 2], self.buf[end + 5:]
                return body
            start = len(self.buf)
            self._fill()

    def quit(self) -> None:
        try:
            self.command("QUIT")
        finally:
            self.sock.close()


# ---------------------------------------------------------------- test data

def fill_mailboxes(data_dir: Path) -> dict[str, int]:
    """Deliver the benchmark mailboxes through our own Maildir store."""
    store = MaildirStore(data_dir / "mail", "bench.example")
    counts = {}

    def fill(mailbox: str, count: int, size: int) -> None:
        body = LINE * max(1, size // len(LINE))
        for number in range(count):
            store.deliver([mailbox], b"Subject: bench %d\nFrom: a@b.example\n\n" % number + body)
        counts[mailbox] = count

    fill("big10k", 10_000, 2_000)
    for n in range(8):
        fill(f"small{n}", 1_000, 10 * 1024)
        fill(f"huge{n}", 1, 25 * 1024 * 1024)
    for n in range(20):
        fill(f"many{n}", 100, 10 * 1024)
    return counts


# ---------------------------------------------------------------- servers

class RssWatcher(threading.Thread):
    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.server.pids))


# ---------------------------------------------------------------- measurements

def timed_listing(port: int) -> float:
    started = time.perf_counter()
    client = Pop3(port, "big10k")
    client.command("STAT")
    listing = client.multiline("LIST")
    uids = client.multiline("UIDL")
    elapsed = time.perf_counter() - started
    client.quit()
    assert listing.count(b"\r\n") == 10_000 and uids.count(b"\r\n") == 10_000
    return elapsed * 1000


def retrieve_all(port: int, mailbox: str, results: list, lock: threading.Lock) -> None:
    client = Pop3(port, mailbox)
    count = int(client.command("STAT").split()[1])
    octets = 0
    started = time.perf_counter()
    for number in range(1, count + 1):
        octets += len(client.multiline(f"RETR {number}"))
    elapsed = time.perf_counter() - started
    client.quit()
    with lock:
        results.append((count, octets, elapsed))


def parallel_retrieval(port: int, mailboxes: list[str]) -> dict:
    results: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=retrieve_all, args=(port, m, results, lock))
               for m in mailboxes]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    wall = time.perf_counter() - started
    messages = sum(r[0] for r in results)
    octets = sum(r[1] for r in results)
    return {"sessions": len(mailboxes), "messages": messages, "seconds": round(wall, 3),
            "msgs_per_s": round(messages / wall, 1), "mb_per_s": round(octets / wall / 2**20, 1)}


def measure(server, repeat: int) -> dict:
    server.start()
    watcher = RssWatcher(server)
    watcher.start()
    try:
        result = {"first_login_listing_ms": round(timed_listing(server.port), 1)}
        warm = [timed_listing(server.port) for _ in range(repeat)]
        result["warm_login_listing_ms"] = round(statistics.median(warm), 1)
        for label, boxes in (("retr_10k_x1000_1", ["small0"]),
                             ("retr_10k_x1000_8", [f"small{n}" for n in range(8)]),
                             ("retr_25m_1", ["huge0"]),
                             ("retr_25m_8", [f"huge{n}" for n in range(8)]),
                             ("sessions_20", [f"many{n}" for n in range(20)])):
            runs = [parallel_retrieval(server.port, boxes) for _ in range(repeat)]
            result[label] = sorted(runs, key=lambda r: r["msgs_per_s"])[len(runs) // 2]
        result["peak_rss_mb"] = round(watcher.peak, 1)
    finally:
        watcher.stop_event.set()
        server.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("ours", "dovecot"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pop3-bench-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        print(f"filling Maildirs in {folder} ...", flush=True)
        mailboxes = list(fill_mailboxes(folder / "data"))
        if os.geteuid() == 0:           # dovecot's mail processes run as nobody
            subprocess.run(["chown", "-R", "65534:65534", str(folder / "data")], check=True)
        servers = []
        if args.only != "dovecot":
            servers.append(Ours(folder, mailboxes, "pop3"))
        if args.only != "ours":
            if Dovecot.available("pop3"):
                servers.append(Dovecot(folder, mailboxes, "pop3"))
            else:
                print("dovecot not installed (apt install dovecot-pop3d): measuring only ours")
        results = {}
        for server in servers:
            print(f"measuring {server.name} ...", flush=True)
            results[server.name] = measure(server, args.repeat)
            print(json.dumps(results[server.name], indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
