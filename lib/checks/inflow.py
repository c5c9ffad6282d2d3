"""Inbound back-pressure: new transactions wait briefly while the outbound
queue's backlog is over its limit."""

from __future__ import annotations

import threading
import time


class InFlow:
    """Postfix's in_flow_delay: when mail comes in faster than the queue runner
    sends it out, a new transaction waits (up to `max_delay`) for the backlog
    to shrink. Clients slow down a little; the queue stays short, and mail
    relayed through it keeps a short delay instead of a growing one."""

    def __init__(self, limit: int = 8, max_delay: float = 1.0):
        self.limit = limit
        self.max_delay = max_delay
        self._backlog = 0
        self._cond = threading.Condition()

    def update(self, backlog: int) -> None:
        with self._cond:
            self._backlog = backlog
            if backlog <= self.limit:
                self._cond.notify_all()

    def admit(self) -> float:
        """Wait while the backlog is over the limit; return the seconds waited."""
        if self._backlog <= self.limit:            # the common case: no lock, no wait
            return 0.0
        started = time.monotonic()
        deadline = started + self.max_delay
        with self._cond:
            while self._backlog > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return time.monotonic() - started
