#!/usr/bin/env python3
"""Screening's cost: 1 KB messages from a stranger at concurrency 8, with
[checks] dnsbl, spf and dmarc on (DNS on loopback, every message DKIM-signed
by its sender), against the same run with [checks] off; optionally with rspamd.

Run from the project root: python3 bench/screening_load.py [--rspamd URL]
Everything listens on loopback; the DNS server is the tests' own (dnslib).
The stranger connects from 127.0.0.2 (the one loopback address a blocklist is
asked about) and trusted_networks leaves loopback out, so every check runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.smtp_load import Client, make_message  # noqa: E402
from lib.core import passwords  # noqa: E402
from tests.helpers.checks import dkim_key, make_key_pem  # noqa: E402
from tests.helpers.net import free_port  # noqa: E402
from tests.helpers.outbound import FakeDNS  # noqa: E402

SENDER = "news@shop.test"
RECIPIENT = "bench@example.org"
CPU_PARTS = ("user", "system", "workers", "bench")


def config(folder: Path, port: int, dns_port: int, checks: str) -> Path:
    ini = folder / "screening.ini"
    ini.write_text(f"""[server]
hostname = mail.example.org
data_dir = {folder / 'data'}
log = {folder / 'server.log'}
[listen]
smtp = 127.0.0.1:{port}
[limits]
max_connections_per_ip = 500
greet_pause = 0
[policy]
trusted_networks = 192.168.77.0/24
[relay]
nameservers = 127.0.0.1:{dns_port}
[checks]
{checks}
[domains]
example.org = *
[mailboxes]
bench = {passwords.hash_password("bench password")}
[aliases]
postmaster = bench
""")
    return ini


def measure(folder: Path, dns: FakeDNS, checks: str, payload: bytes, args) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "mailbox_appliance.py"), "-c",
                               str(config(folder, port, dns.port, checks)), "serve"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if not server.stdout.readline().startswith("listening"):
            raise SystemExit("mailbox_appliance did not start")
        totals: list[float] = []
        data: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        def work() -> None:
            client = Client("127.0.0.1", port, 60, source="127.0.0.2")
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    client.send_message(SENDER, RECIPIENT, payload)
                except (OSError, RuntimeError) as error:
                    errors.append(str(error)[:200])
                    return
                with lock:
                    totals.append(time.perf_counter() - started)
                    data.append(client.data_seconds)
            client.close()

        began = time.monotonic()
        client_cpu = time.process_time()
        threads = [threading.Thread(target=work) for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.duration + 60)
        wall = time.monotonic() - began
        cpu = server_cpu_seconds(server.pid)
        client_cpu = time.process_time() - client_cpu
        data.sort()
        return {"checks": checks.replace("\n", "; ") or "off", "messages": len(totals),
                "errors": len(errors), "first_error": errors[:1],
                "msgs_per_s": round(len(totals) / wall, 1),
                # CPU per message: the server's user and system time, its check
                # workers' (both), and this client's (with the DNS server)
                "cpu_ms_per_msg": {name: round(seconds * 1000 / len(totals), 3)
                                   for name, seconds in zip(CPU_PARTS, (*cpu, client_cpu),
                                                            strict=True)}
                if totals else None,
                "data_p50_ms": round(statistics.median(data) * 1000, 2) if data else None,
                "data_p99_ms": round(data[int(0.99 * (len(data) - 1))] * 1000, 2) if data else None}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def server_cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(user, system) CPU seconds the server has used so far, and the user and
    system time of its check workers (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")

    def times(process: int) -> tuple[float, float]:
        fields = Path(f"/proc/{process}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) / tick, int(fields[12]) / tick

    workers = 0.0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                workers += sum(times(int(child)))
            except OSError:
                pass
    return (*times(pid), workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--rspamd", help="also a run with [checks] rspamd = this URL; 'start': "
                                         "start one (Debian's rspamd) on loopback, as the tests do")
    parser.add_argument("--only", action="append", metavar="CHECKS",
                        help="instead of the standard runs: this [checks] body (repeatable), "
                             "e.g. 'spf = tag', to see what costs what")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true",
                        help="leave the runs' folders (logs, Maildirs) and say where: deleting "
                             "many files slows the next run's file creation on ext4 for minutes")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="screening-bench-"))
    dns = FakeDNS().start()
    rspamd = None
    try:
        key = dkim_key(make_key_pem(folder, 2048), "shop.test", "s1")
        dns.txt(key.name, key.record)
        dns.txt("shop.test", "v=spf1 ip4:127.0.0.0/8 -all")
        dns.txt("_dmarc.shop.test", "v=DMARC1; p=reject")
        dns.exists("2.0.0.127.bl.test")                 # not listed: NOERROR, no A record
        message = make_message(1024, SENDER, RECIPIENT).replace(
            f"From: <{SENDER}>".encode(), f"From: Shop <{SENDER}>".encode())
        payload = key.sign(message)
        runs = {"off": "", "dnsbl+spf+dmarc": "dnsbl = bl.test\nspf = tag\ndmarc = reject"}
        if args.only:
            runs = {"off": "", **{only: only.replace("; ", "\n") for only in args.only}}
        if args.rspamd == "start":
            from tests.helpers.daemons import start_rspamd
            rspamd = start_rspamd(folder / "rspamd")
            args.rspamd = f"http://127.0.0.1:{rspamd.port}"
        if args.rspamd:
            runs["rspamd"] = f"rspamd = {args.rspamd}"
        results: dict[str, list[dict]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, checks in runs.items():
                run_folder = folder / f"{name}-{len(results[name])}"
                run_folder.mkdir()
                results[name].append(measure(run_folder, dns, checks, payload, args))
                print(json.dumps({name: results[name][-1]}), flush=True)
        summary = {}
        for name, found in results.items():
            rates = sorted(r["msgs_per_s"] for r in found)
            summary[name] = {"median_msgs_per_s": rates[len(rates) // 2],
                             "data_p50_ms": statistics.median(r["data_p50_ms"] for r in found),
                             "data_p99_ms": statistics.median(r["data_p99_ms"] for r in found)}
        off = summary["off"]["median_msgs_per_s"]
        for name in summary:
            summary[name]["ratio_to_off"] = round(summary[name]["median_msgs_per_s"] / off, 2)
        print(json.dumps(summary, indent=1))
        if args.json:
            args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
    finally:
        dns.stop()
        if rspamd is not None:
            rspamd.stop()
        if args.keep:
            print(f"left in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
