#!/usr/bin/env python3
"""Relay benchmark: messages/s from submission (AUTH) through the queue to a
sink SMTP server, and the time from the client's 250 to the message's arrival
at the sink (p50/p99).

The sink runs in this process (stdlib threads), so the two timestamps come
from one clock. mailbox_appliance listens on 127.0.0.1:2587 (submission) and
delivers to the sink through a [routes] entry; everything stays on loopback.

    python3 bench/relay_load.py --concurrency 8 --duration 10
    python3 bench/relay_load.py --dkim ed25519      # DKIM-signed: rsa | ed25519 | none

With --dkim the script makes example.org's key (RSA 2048 or Ed25519) in the
server's data_dir, and the sink counts the messages that arrive signed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import socketserver
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

from bench.smtp_load import Client, make_message  # noqa: E402
from lib.core import passwords  # noqa: E402

SUBMISSION_PORT = 2587
PASSWORD = "relay-bench"


class Sink(socketserver.ThreadingTCPServer):
    """Accepts everything; notes when each message (by its X-Bench-Id) arrived."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.arrivals: dict[str, float] = {}
        self.signed = 0                   # messages that arrived with a DKIM-Signature
        self.lock = threading.Lock()


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        write = self.wfile.write
        write(b"220 sink.example ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                write(b"250-sink.example\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"DATA":
                write(b"354 go ahead\r\n")
                bench_id = None
                signed = False
                while True:
                    data = self.rfile.readline()
                    if not data or data == b".\r\n":
                        break
                    if data.startswith(b"X-Bench-Id: "):
                        bench_id = data[12:].strip().decode()
                    elif data.startswith(b"DKIM-Signature:"):
                        signed = True
                if bench_id:
                    with self.server.lock:
                        self.server.arrivals[bench_id] = time.monotonic()
                        self.server.signed += signed
                write(b"250 2.0.0 stored\r\n")
            elif verb == b"QUIT":
                write(b"221 bye\r\n")
                return
            else:
                write(b"250 2.0.0 ok\r\n")


def config(folder: Path, sink_port: int, algorithm: str) -> Path:
    ini = folder / "relay.ini"
    dkim_section = f"[dkim]\nselector = bench\nalgorithms = {algorithm}\n" \
        if algorithm != "none" else ""
    ini.write_text(f"""[server]
hostname = mail.example.org
data_dir = {folder / 'data'}
log = {folder / 'server.log'}
[listen]
submission = 127.0.0.1:{SUBMISSION_PORT}
[limits]
max_connections_per_ip = 500
[relay]
mode = mx
[routes]
sink.example = 127.0.0.1:{sink_port}
[domains]
example.org = *
[mailboxes]
bench = {passwords.hash_password(PASSWORD)}
[aliases]
postmaster = bench
{dkim_section}""")
    if algorithm != "none":
        make_keys(ini)
    return ini


def make_keys(ini: Path) -> None:
    """example.org's DKIM key(s) for the configured algorithm, in the data_dir."""
    from lib.config.schema import load
    from lib.outbound import dkim
    cfg = load(ini)
    for algorithm, selector in cfg.dkim.selectors().items():
        path = dkim.key_path(cfg.server.data_dir, "example.org", selector)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dkim.new_key_file(algorithm))


def client_worker(args, stop_at: float, sent: dict, lock: threading.Lock, errors: list) -> None:
    client = Client("127.0.0.1", SUBMISSION_PORT, 60)
    token = base64.b64encode(f"\0bench\0{PASSWORD}".encode()).decode()
    client.send(f"AUTH PLAIN {token}\r\n".encode())
    client.expect(235)
    number = 0
    name = threading.current_thread().name
    while time.monotonic() < stop_at:
        number += 1
        bench_id = f"{name}-{number}"
        payload = b"X-Bench-Id: " + bench_id.encode() + b"\r\n" + \
            make_message(args.size, "bench@example.org", "sink@sink.example")
        try:
            client.send_message("bench@example.org", "sink@sink.example", payload)
        except (OSError, RuntimeError) as error:
            errors.append(str(error))
            break
        with lock:
            sent[bench_id] = time.monotonic()
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the rest")
    parser.add_argument("--dkim", choices=("none", "rsa", "ed25519"), default="none",
                        help="sign the relayed mail with this algorithm (keys made here)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sink = Sink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    folder = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    server = subprocess.Popen([sys.executable, str(ROOT / "mailbox_appliance.py"), "-c",
                               str(config(folder, sink.server_address[1], args.dkim)), "serve"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if not server.stdout.readline().startswith("listening"):
            raise SystemExit("mailbox_appliance did not start")
        sent: dict[str, float] = {}
        errors: list[str] = []
        lock = threading.Lock()
        started = time.monotonic()
        stop_at = started + args.duration
        threads = [threading.Thread(target=client_worker, args=(args, stop_at, sent, lock, errors),
                                    name=f"c{n}") for n in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.duration + 60)
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:
            with sink.lock:
                if len(sink.arrivals) >= len(sent):
                    break
            time.sleep(0.05)
        finished = max(sink.arrivals.values(), default=time.monotonic())
        latencies = sorted((sink.arrivals[k] - t) * 1000 for k, t in sent.items()
                           if k in sink.arrivals)
        delivered = len(latencies)
        result = {
            "concurrency": args.concurrency, "size": args.size, "accepted": len(sent),
            "delivered": delivered, "errors": len(errors), "dkim": args.dkim,
            "signed": sink.signed,
            "accepted_per_s": round(len(sent) / args.duration, 1),
            "relayed_per_s": round(delivered / (finished - started), 1),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        }
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        sink.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    signed_ok = result["signed"] == (0 if args.dkim == "none" else result["delivered"])
    return 0 if result["delivered"] == result["accepted"] and not errors and signed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
