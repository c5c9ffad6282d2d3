"""Connection caps: open connections in total, per client IP and for strangers
on port 25 ([limits] max_connections, max_connections_per_ip); stress mode
near the caps; refusing newcomers while the server stops.

The household's listeners (submission, submissions, pop3, pop3s, imap, imaps) stay
usable when strangers flood port 25, so strangers on the smtp listener (a
client not in trusted_networks) may hold at most SMTP_SHARE of
max_connections; the rest is kept for the others. Near a cap the server is
under stress, as Postfix calls it: timeouts drop to [limits] stress_timeout
so that idle connections make room sooner.
"""

from __future__ import annotations

import threading

from ..config.schema import Config
from ..core import replies
from ..core.replies import Reply
from ..log.events import EventLog
from . import trust

SMTP_SHARE = 0.7        # of max_connections, for strangers on port 25
STRESS_ABOVE = 0.8      # stress mode when a pool holds more than this share of its cap ...
CALM_AT = 0.6           # ... until every pool is back at or below this share


class ConnectionTracker:
    """Open connections, in total, per client IP and of strangers on port 25."""

    def __init__(self):
        self._lock = threading.Lock()
        self._per_ip: dict[str, int] = {}
        self.total = 0
        self.strangers = 0              # of them: strangers on the smtp listener
        self.stressed = False           # read without the lock: a bool is set atomically
        self.draining = False           # the server is stopping: newcomers are refused
        self._caps = (0, 0)             # (max_connections, the strangers' share) last seen
        self._log = EventLog("listener")

    @staticmethod
    def counts_as_stranger(listener: str, ip: str, config: Config) -> bool:
        """Does a connection take one of the strangers' slots? Those on port 25
        from outside trusted_networks do; the household's listeners never."""
        return listener == "smtp" and not trust.is_trusted(config, ip)

    def open(self, ip: str, config: Config, stranger: bool = False) -> Reply | None:
        """Admit a connection (None) or say why not (a 421 reply). `stranger`: it
        takes one of the strangers' slots (counts_as_stranger); close() must be
        told the same."""
        limits = config.limits
        with self._lock:
            self._caps = (limits.max_connections,
                          max(1, int(limits.max_connections * SMTP_SHARE)))
            if self.draining:
                return replies.SHUTTING_DOWN
            if self.total >= limits.max_connections:
                return replies.TOO_MANY_CONNECTIONS
            if stranger and self.strangers >= self._caps[1]:
                return replies.TOO_MANY_CONNECTIONS
            if self._per_ip.get(ip, 0) >= limits.max_connections_per_ip:
                return replies.TOO_MANY_FROM_YOU
            self.total += 1
            self.strangers += stranger
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            self._update_stress()
            return None

    def close(self, ip: str, stranger: bool = False) -> None:
        with self._lock:
            self.total -= 1
            self.strangers -= stranger
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
            self._update_stress()

    def count(self, ip: str) -> int:
        with self._lock:
            return self._per_ip.get(ip, 0)

    def drain(self) -> None:
        """The server stops: refuse newcomers; idle sessions see `draining` and end."""
        self.draining = True

    def _update_stress(self) -> None:
        """Enter stress mode above STRESS_ABOVE of a cap, leave it at CALM_AT (so that
        one connection coming and going at the edge does not flap it); logged both ways."""
        total_cap, strangers_cap = self._caps
        if not total_cap:
            return
        shares = (self.total / total_cap, self.strangers / strangers_cap)
        if not self.stressed and max(shares) > STRESS_ABOVE:
            self.stressed = True
            self._log.warning("stress", state="on", connections=self.total,
                              strangers=self.strangers, max_connections=total_cap)
        elif self.stressed and max(shares) <= CALM_AT:
            self.stressed = False
            self._log.info("stress", state="off", connections=self.total,
                           strangers=self.strangers, max_connections=total_cap)
