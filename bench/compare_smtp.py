#!/usr/bin/env python3
"""Side-by-side SMTP benchmark: mailbox_appliance against a reference server.

Starts mailbox_appliance on 127.0.0.1:2625 with a throw-away data folder
(fsync on, as always), and measures it with bench/smtp_load.py next to a
reference server already listening on --reference-port (Postfix from
bench/postfix/setup.sh listens on 127.0.0.1:2626). Runs alternate between
the two servers so both see the same machine state. Prints one line per run
and a summary with medians; --json writes everything to a file.

    sudo bench/postfix/setup.sh                 # once: the Postfix reference
    python3 bench/compare_smtp.py --quick        # the two headline figures
    python3 bench/compare_smtp.py                # the whole matrix
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench import smtp_load  # noqa: E402
from lib.core import passwords  # noqa: E402

PORT = 2625


def bench_config(folder: Path) -> Path:
    ini = folder / "bench.ini"
    ini.write_text(f"""\
[server]
hostname = mail.example.org
data_dir = {folder / 'data'}
log = {folder / 'server.log'}
log_level = info

[listen]
smtp = 127.0.0.1:{PORT}

[limits]
max_connections = 1000
max_connections_per_ip = 1000

[domains]
example.org = *

[mailboxes]
bench = {passwords.hash_password('bench')}

[aliases]
postmaster = bench
""")
    return ini


def start_server(ini: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(ROOT / "mailbox_appliance.py"), "-c",
                                str(ini), "serve"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening"):
        process.kill()
        raise SystemExit(f"mailbox_appliance did not start: {line!r}")
    return process


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def load(port: int, size: int, concurrency: int, per_connection: int, duration: float) -> dict:
    args = argparse.Namespace(host="127.0.0.1", port=port, size=size, concurrency=concurrency,
                              duration=duration, max_messages=10_000_000,
                              per_connection=per_connection, sender="bench@load.example",
                              recipient="bench@example.org", timeout=60.0)
    return smtp_load.run(args)


def idle_connections(port: int, count: int) -> int:
    """Open `count` connections, read each greeting, hold them; return how many got 220."""
    held, good = [], 0
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            if sock.recv(512).startswith(b"220"):
                good += 1
        time.sleep(1.0)
        for sock in held:
            sock.sendall(b"NOOP\r\n")
        good = sum(1 for sock in held if sock.recv(512).startswith(b"250"))
    finally:
        for sock in held:
            sock.close()
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-port", type=int, default=2626)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only 1K and 1M at concurrency 8")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()

    sizes = {"1K": 1024, "10K": 10 * 1024, "1M": 1024 * 1024}
    matrix = [(s, c, p) for s in sizes for c in (1, 8, 50) for p in (0, 1)]
    if args.quick:
        matrix = [("1K", 8, 0), ("1M", 8, 0)]
    has_reference = port_open(args.reference_port)
    if not has_reference:
        print(f"no reference server on port {args.reference_port}: measuring only ours")
    folder = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    server = start_server(bench_config(folder))
    results = []
    try:
        for size_name, concurrency, per_connection in matrix:
            repeat = args.repeat if (size_name, concurrency, per_connection) in \
                (("1K", 8, 0), ("1M", 8, 0)) else 1
            for target, port in (("ours", PORT), ("reference", args.reference_port)):
                if target == "reference" and not has_reference:
                    continue
                load(port, sizes[size_name], concurrency, per_connection, 1.0)   # warm-up
                time.sleep(1.0)
                runs = []
                for _ in range(repeat):
                    result = load(port, sizes[size_name], concurrency, per_connection,
                                  args.duration)
                    runs.append(result)
                    if target == "ours":
                        result["rss_mb"] = round(rss_mb(server.pid), 1)
                    print(f"{target:9} size={size_name:3} c={concurrency:2} "
                          f"{'1/conn' if per_connection else 'persist'} "
                          f"{result['msgs_per_s']:8.1f} msg/s p50={result['p50_ms']:7.2f}ms "
                          f"p99={result['p99_ms']:7.2f}ms errors={result['errors']}"
                          + (f" rss={result.get('rss_mb')}MB" if target == "ours" else ""),
                          flush=True)
                results.append({"server": target, "size": size_name,
                                "concurrency": concurrency,
                                "per_connection": per_connection or "persistent",
                                "median_msgs_per_s": statistics.median(r["msgs_per_s"]
                                                                       for r in runs),
                                "runs": runs})
        held = idle_connections(PORT, 200)
        print(f"ours: {held}/200 idle connections held, rss={rss_mb(server.pid):.1f}MB")
        results.append({"server": "ours", "idle_connections_held": held,
                        "rss_mb": rss_mb(server.pid)})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    print("\nsummary (median msg/s):")
    by_key: dict = {}
    for item in results:
        if "median_msgs_per_s" in item:
            key = (item["size"], item["concurrency"], item["per_connection"])
            by_key.setdefault(key, {})[item["server"]] = item["median_msgs_per_s"]
    for (size, conc, mode), values in by_key.items():
        ratio = (f" ratio={values['ours'] / values['reference']:.2f}"
                 if values.get("reference") else "")
        print(f"  {size:3} c={conc:2} {mode!s:10} ours={values.get('ours')}"
              f" reference={values.get('reference', '-')}{ratio}")
    if args.json:
        args.json.write_text(json.dumps({"machine": os.uname().release, "cpus": os.cpu_count(),
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
