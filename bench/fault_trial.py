#!/usr/bin/env python3
"""Fault trial: kill -9 the server during intake and during queue delivery,
restart it, and count acknowledged messages lost and duplicated.

Intake rounds: clients send messages to local mailboxes and note each one
the server answered 250; the server is killed at a random moment, started
again, and the Maildirs are compared with the notes. Delivery rounds:
clients send to remote recipients (two next hops), the queue runner relays
them to a sink SMTP server in this process, the server is killed at a
random moment, started again, and what reached the sink is compared with
what was acknowledged. A duplicate of a recipient that the killed server
had already handed over (the sink had the message before the restart)
while its queue entry still listed it as pending is at-least-once
delivery, the duplicate window of RFC 1047 (the remote's 250 came, the
queue had not noted it yet): counted apart from any other duplicate,
which would be a bug. Only the entries the delivery threads were working
on at the kill can be in that state, so more such entries in one round
than there are threads counts as a bug too (a queue that notes deliveries
late).

Everything listens on and connects to 127.0.0.1 only; the server is
stopped by its PID; every wait is bounded.

    python3 bench/fault_trial.py --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import smtplib
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lib.core import passwords  # noqa: E402
from lib.outbound.runner import WORKERS  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT = 20.0          # seconds for a (re)started server to report its listener
CLIENT_TIMEOUT = 10.0         # socket timeout of the trial's SMTP clients
ID_HEADER = b"X-Trial-Id: "
LOCAL = ("a@example.org", "b@example.org")
REMOTE = ("x@one.sink.example", "y@two.sink.example")   # two domains: two transactions


# ---------------------------------------------------------------- the sink

class Sink(socketserver.ThreadingTCPServer):
    """Takes every message; notes when each (trial id, recipient) arrived,
    at the final dot, before its 250 (as a real MTA commits before it answers)."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, delay: float):
        super().__init__((HOST, 0), SinkHandler)
        self.delay = delay                      # before each 250: widens the window to hit
        self.arrivals: dict[tuple[str, str], list[float]] = {}
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a killed client: expected
            super().handle_error(request, client_address)


class SinkHandler(socketserver.StreamRequestHandler):
    server: Sink

    def handle(self) -> None:
        write = self.wfile.write
        write(b"220 sink.example ESMTP\r\n")
        rcpts: list[str] = []
        while line := self.rfile.readline(4096):
            verb = line[:4].upper()
            if verb == b"EHLO":
                write(b"250-sink.example\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"RCPT":
                rcpts.append(line.split(b":", 1)[1].strip().strip(b"<>").decode())
                write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                write(b"354 go ahead\r\n")
                trial_id = self._read_message()
                if trial_id is None:
                    return                      # the client went away mid-message
                with self.server.lock:
                    for rcpt in rcpts:
                        self.server.arrivals.setdefault((trial_id, rcpt), []).append(
                            time.monotonic())
                rcpts = []
                time.sleep(self.server.delay)
                write(b"250 2.0.0 stored\r\n")
            elif verb == b"QUIT":
                write(b"221 bye\r\n")
                return
            else:                               # MAIL, RSET, NOOP
                rcpts = [] if verb in (b"MAIL", b"RSET") else rcpts
                write(b"250 2.0.0 ok\r\n")

    def _read_message(self) -> str | None:
        trial_id = ""
        while data := self.rfile.readline(4096):
            if data == b".\r\n":
                return trial_id
            if data.startswith(ID_HEADER) and not trial_id:
                trial_id = data[len(ID_HEADER):].strip().decode()
        return None


# ---------------------------------------------------------------- the server

@dataclass
class Server:
    """`mailbox_appliance.py serve` in `folder`, started, killed and stopped by PID."""
    folder: Path
    process: subprocess.Popen | None = None
    port: int = 0
    starts: int = 0

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> float:
        """Start and wait for its SMTP listener; returns when it was launched."""
        launched = time.monotonic()
        stderr = open(self.folder / "stderr.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "mailbox_appliance.py"), "-c",
             str(self.folder / "trial.ini"), "serve"],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
        stderr.close()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_drain, args=(self.process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("listening smtp "):
                self.port = int(line.rsplit(":", 1)[1])
                self.starts += 1
                return launched
        self.stop()
        raise SystemExit(f"the server did not start; see {self.folder / 'stderr.log'}")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _drain(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.strip())


def write_config(folder: Path, sink_port: int) -> None:
    secret = passwords.hash_password("fault-trial")
    (folder / "trial.ini").write_text(f"""[server]
hostname = mail.example.org
data_dir = {folder / 'data'}
log = {folder / 'server.log'}
[listen]
smtp = {HOST}:0
[limits]
max_connections_per_ip = 500
[policy]
trusted_networks = 127.0.0.0/8
[relay]
mode = mx
retry = 1s
give_up_after = 1d
[routes]
one.sink.example = {HOST}:{sink_port}
two.sink.example = {HOST}:{sink_port}
[domains]
example.org = *
[mailboxes]
a = {secret}
b = {secret}
[aliases]
postmaster = a
""")


# ---------------------------------------------------------------- clients

def send_until_killed(port: int, prefix: str, targets: tuple[str, ...], size: int,
                      acked: dict[str, list[str]], lock: threading.Lock,
                      limit: float) -> None:
    """Send messages, one or two recipients each, until the server goes away
    (or `limit` seconds pass); note each one answered 250 after DATA."""
    body = b"".join(b"line %d of the fault trial's message body\r\n" % n
                    for n in range(max(1, size // 44)))
    try:
        client = smtplib.SMTP(HOST, port, timeout=CLIENT_TIMEOUT)
    except OSError:
        return
    number = 0
    stop_at = time.monotonic() + limit
    try:
        while time.monotonic() < stop_at:
            number += 1
            trial_id = f"{prefix}-{number}"
            rcpts = list(targets[:1 + number % 2])
            message = (f"From: trial@example.org\r\nTo: {', '.join(rcpts)}\r\n"
                       f"Subject: fault trial\r\nMessage-ID: <{trial_id}@trial.example>\r\n"
                       ).encode() + ID_HEADER + trial_id.encode() + b"\r\n\r\n" + body
            client.sendmail("trial@example.org", rcpts, message)    # raises unless 250
            with lock:
                acked[trial_id] = rcpts
    except (OSError, smtplib.SMTPException):
        pass                                    # killed: whatever was not answered is not ours
    finally:
        client.close()


def load_then_kill(server: Server, prefix: str, targets: tuple[str, ...], args,
                   rng: random.Random) -> tuple[dict[str, list[str]], float]:
    """Clients send while the server runs; kill -9 it at a random moment.
    Returns what was acknowledged (id -> recipients) and the kill's time."""
    acked: dict[str, list[str]] = {}
    lock = threading.Lock()
    kill_after = rng.uniform(0.2, args.max_kill_delay)
    threads = [threading.Thread(target=send_until_killed, daemon=True,
                                args=(server.port, f"{prefix}-c{n}", targets, args.size,
                                      acked, lock, kill_after + 5))
               for n in range(args.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)
    server.kill()
    killed = time.monotonic()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT + 5)
    with lock:
        return dict(acked), killed


def trial_id_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        return None
    for line in head.split(b"\n"):
        if line.startswith(ID_HEADER):
            return line[len(ID_HEADER):].strip().decode()
        if not line.strip():
            break
    return None


# ---------------------------------------------------------------- rounds

@dataclass
class Tally:
    rounds: int = 0
    acknowledged: int = 0                 # (message, recipient) pairs answered 250
    lost: int = 0
    duplicated: int = 0                   # extra copies that are not at-least-once
    at_least_once: int = 0                # extra copies of a hand-over the queue had not noted
    unacknowledged_kept: int = 0          # pairs stored/delivered though the client saw no 250
    queued_at_kill: int = 0               # delivery rounds: entries in the queue at the kill
    quarantined: int = 0
    details: list[str] = field(default_factory=list)


def intake_round(server: Server, number: int, args, rng: random.Random, tally: Tally) -> None:
    acked, _ = load_then_kill(server, f"i{number}", LOCAL, args, rng)
    server.start()
    stored: Counter[tuple[str, str]] = Counter()
    for mailbox in ("a", "b"):
        for sub in ("new", "cur"):
            folder = server.data / "mail" / mailbox / sub
            for path in (folder.iterdir() if folder.is_dir() else []):
                trial_id = trial_id_of(path)
                if trial_id is not None:
                    stored[(trial_id, f"{mailbox}@example.org")] += 1
                path.unlink()               # the next round starts with empty Maildirs
    wanted = {(i, rcpt) for i, rcpts in acked.items() for rcpt in rcpts}
    tally.rounds += 1
    tally.acknowledged += len(wanted)
    tally.lost += _note(tally, "intake", number, "lost", sorted(wanted - set(stored)))
    tally.duplicated += _note(tally, "intake", number, "duplicated",
                              sorted(p for p, n in stored.items() if n > 1))
    tally.unacknowledged_kept += len(set(stored) - wanted)


def delivery_round(server: Server, sink: Sink, number: int, args, rng: random.Random,
                   tally: Tally) -> None:
    acked, _ = load_then_kill(server, f"d{number}", REMOTE, args, rng)
    pending = queue_snapshot(server.data / "queue" / "entries")
    tally.queued_at_kill += len({trial_id for trial_id, _ in pending})
    restarted = server.start()
    wanted = {(i, rcpt) for i, rcpts in acked.items() for rcpt in rcpts}
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:            # every acknowledged pair, and an empty queue
        with sink.lock:
            arrived = set(sink.arrivals)
        # (a .msg without its .env is what a kill left before a commit point: no entry)
        if wanted <= arrived and not any((server.data / "queue" / "entries").glob("*.env")):
            break
        time.sleep(0.1)
    time.sleep(0.5)                               # anything that would come twice, comes now
    with sink.lock:
        arrivals = {pair: list(times) for pair, times in sink.arrivals.items()
                    if pair[0].startswith(f"d{number}-")}
    expected, unexpected = [], []
    for pair, times in arrivals.items():
        if len(times) > 1:
            # handed over by the killed server, still pending in its queue: at least once
            handed_over = sum(1 for t in times if t < restarted)
            kind = expected if pair in pending and handed_over >= 1 else unexpected
            kind.extend([pair] * (len(times) - 1))
    if len({trial_id for trial_id, _ in expected}) > WORKERS:   # more than were in flight
        unexpected, expected = unexpected + expected, []
    tally.rounds += 1
    tally.acknowledged += len(wanted)
    tally.lost += _note(tally, "delivery", number, "lost", sorted(wanted - set(arrivals)))
    tally.duplicated += _note(tally, "delivery", number, "duplicated", unexpected)
    tally.at_least_once += len(expected)
    tally.unacknowledged_kept += len(set(arrivals) - wanted)


def queue_snapshot(entries: Path) -> set[tuple[str, str]]:
    """(trial id, recipient) pairs still pending in the queue of the killed server."""
    pending = set()
    for envelope_path in entries.glob("*.env"):
        trial_id = trial_id_of(envelope_path.with_suffix(".msg"))
        try:
            envelope = json.loads(envelope_path.read_bytes())
        except (OSError, ValueError):
            continue                                # a bad one shows up as quarantined
        if not isinstance(envelope, dict) or not isinstance(envelope.get("recipients"), list):
            continue
        for recipient in envelope["recipients"]:
            if trial_id and recipient["state"] == "pending":
                pending.add((trial_id, recipient["address"]))
    return pending


def _note(tally: Tally, phase: str, number: int, what: str, pairs: list) -> int:
    if pairs:
        tally.details.append(f"{phase} round {number}: {len(pairs)} {what}: {pairs[:5]}")
    return len(pairs)


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of each kind")
    parser.add_argument("--concurrency", type=int, default=4, help="clients during a round")
    parser.add_argument("--size", type=int, default=2048, help="octets of message body")
    parser.add_argument("--max-kill-delay", type=float, default=1.5,
                        help="the kill comes 0.2 s to this many seconds into a round")
    parser.add_argument("--sink-delay", type=float, default=0.005,
                        help="seconds the sink waits before each 250")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds a delivery round waits for the queue to empty")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="fault-trial-"))
    sink = Sink(args.sink_delay)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    write_config(folder, sink.server_address[1])
    server = Server(folder)
    intake, delivery = Tally(), Tally()
    started = time.monotonic()
    try:
        server.start()
        for number in range(1, args.rounds + 1):
            intake_round(server, number, args, rng, intake)
        for number in range(1, args.rounds + 1):
            delivery_round(server, sink, number, args, rng, delivery)
        bad = server.data / "queue" / "bad"
        delivery.quarantined = len(list(bad.iterdir())) if bad.is_dir() else 0
    finally:
        server.stop()
        sink.shutdown()
        sink.server_close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    result = {"seed": seed, "seconds": round(time.monotonic() - started, 1),
              "restarts": server.starts - 1,
              "intake": {k: v for k, v in vars(intake).items() if k != "queued_at_kill"},
              "delivery": dict(vars(delivery))}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    failed = intake.lost + intake.duplicated + delivery.lost + delivery.duplicated + \
        delivery.quarantined
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
