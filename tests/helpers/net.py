"""Where test servers listen and how long tests wait on a socket: loopback only."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"
TIMEOUT = 30                     # every socket and subprocess a test opens


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of `hosts` right now (for servers that cannot
    be told port 0, and for configs written before their server starts)."""
    hosts = hosts or (HOST,)
    for _ in range(50):
        with socket.socket(_family(hosts[0])) as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if all(_bindable(other, port) for other in hosts[1:]):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host)) as check:
        try:
            check.bind((host, port))
        except OSError:
            return False
    return True
