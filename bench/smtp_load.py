#!/usr/bin/env python3
"""SMTP load generator: messages/s and latency percentiles against any SMTP server.

Standard library only, one thread per simulated client. Each client sends
MAIL, RCPT and DATA in one write (PIPELINING, RFC 2920), then the message
and the final dot, so the generator spends as little CPU as it can on the
two cores it shares with the server. Latency is measured from the MAIL
command to the 250 that acknowledges the message.

    python3 bench/smtp_load.py --port 2525 --size 1K --concurrency 8 --duration 10
    python3 bench/smtp_load.py --port 2525 --size 1M --concurrency 50 --per-connection 1

Only connects to the host given (default 127.0.0.1); every run is bounded by
--duration and --max-messages.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024 ** 2}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def make_message(size: int, sender: str, recipient: str) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: load test\r\n"
            f"Message-ID: <{os.getpid()}.{time.time_ns()}@bench.example>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmno\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body[: max(0, size - len(head))].rsplit(b"\r\n", 1)[0] + b"\r\n"


class Client:
    def __init__(self, host: str, port: int, timeout: float, source: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.data_seconds = 0.0     # end of DATA to the reply, of the last message
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect(220)
        self.send(b"EHLO bench.example\r\n")
        self.expect(250)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        """One complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def expect(self, code: int) -> bytes:
        got, text = self.reply()
        if got != code:
            raise RuntimeError(f"expected {code}, got {text[:200]!r}")
        return text

    def send_message(self, sender: str, recipient: str, payload: bytes) -> None:
        self.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
        self.expect(250)
        self.expect(250)
        self.expect(354)
        started = time.perf_counter()
        self.send(payload + b".\r\n")
        self.expect(250)
        self.data_seconds = time.perf_counter() - started

    def close(self) -> None:
        try:
            self.send(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.sock.close()


def worker(args, payload: bytes, stop_at: float, budget: list, latencies: list,
           errors: list, lock: threading.Lock) -> None:
    client = None
    sent_on_connection = 0
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        try:
            if client is None:
                client = Client(args.host, args.port, args.timeout)
                sent_on_connection = 0
            started = time.perf_counter()
            client.send_message(args.sender, args.recipient, payload)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
            sent_on_connection += 1
            if args.per_connection and sent_on_connection >= args.per_connection:
                client.close()
                client = None
        except (OSError, RuntimeError, ConnectionError) as error:
            with lock:
                errors.append(str(error)[:200])
            if client is not None:
                client.sock.close()
                client = None
            time.sleep(0.05)
    if client is not None:
        client.close()


def run(args) -> dict:
    payload = make_message(args.size, args.sender, args.recipient)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    budget = [args.max_messages]
    started = time.monotonic()
    stop_at = started + args.duration
    threads = [threading.Thread(target=worker, daemon=True,
                                args=(args, payload, stop_at, budget, latencies, errors, lock))
               for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.duration + args.timeout + 30)
    wall = time.monotonic() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else 0

    return {"size": args.size, "concurrency": args.concurrency,
            "per_connection": args.per_connection or "persistent",
            "messages": len(latencies), "errors": len(errors), "first_error": errors[:1],
            "seconds": round(wall, 2), "msgs_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(pct(50), 2), "p99_ms": round(pct(99), 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=parse_size, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (upper bound)")
    parser.add_argument("--max-messages", type=int, default=1_000_000)
    parser.add_argument("--per-connection", type=int, default=0,
                        help="messages per connection (0 = one connection per client)")
    parser.add_argument("--sender", default="bench@load.example")
    parser.add_argument("--recipient", default="bench@example.org")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else
          " ".join(f"{key}={value}" for key, value in result.items()))
    return 0 if result["messages"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
