"""Connection caps: open connections in total and per client IP
([limits] max_connections, max_connections_per_ip)."""

from __future__ import annotations

import threading

from ..config.schema import Config
from ..core import replies
from ..core.replies import Reply


class ConnectionTracker:
    """Open connections, in total and per client IP ([limits] max_connections*)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._per_ip: dict[str, int] = {}
        self.total = 0

    def open(self, ip: str, config: Config) -> Reply | None:
        """Admit a connection (None) or say why not (a 421 reply)."""
        with self._lock:
            if self.total >= config.limits.max_connections:
                return replies.TOO_MANY_CONNECTIONS
            if self._per_ip.get(ip, 0) >= config.limits.max_connections_per_ip:
                return replies.TOO_MANY_FROM_YOU
            self.total += 1
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            return None

    def close(self, ip: str) -> None:
        with self._lock:
            self.total -= 1
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def count(self, ip: str) -> int:
        with self._lock:
            return self._per_ip.get(ip, 0)
