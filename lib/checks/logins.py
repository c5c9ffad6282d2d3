"""Logins: the password check and the auth_failures lock-out, shared by
SMTP AUTH and POP3, so a guess on one port counts on every port."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..config.router import Router
from ..config.schema import Config, Rate
from ..core import passwords

# A hash of a random password nobody knows: an unknown login name is checked
# against it, so it costs as long as a known one and does not reveal the name.
_DUMMY_HASH = ("$scrypt$ln=14,r=8,p=1$7ot5dATHLB8TFdp8uh4joA"
               "$iSQIP7DFQvp1MI0DBPvRjHkBQ2X5wvlsSTgnAFc554s")
MAX_TRACKED_IPS = 10_000        # bound on the failure table under a distributed attack


class AuthThrottle:
    """Failed logins per client IP in a sliding window ([limits] auth_failures).

    When an IP has `rate.count` failures within `rate.window`, it gets a
    temporary error to every login attempt until the oldest failure ages out.
    Successes do not reset the count: one known account must not buy an
    attacker fresh guesses at the others.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, window: float, now: float) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def locked(self, ip: str, rate: Rate) -> bool:
        with self._lock:
            times = self._recent(ip, rate.window, self._clock())
            return times is not None and len(times) >= rate.count

    def record_failure(self, ip: str, rate: Rate) -> int:
        """Count a failure; return how many are in the window now."""
        now = self._clock()
        with self._lock:
            times = self._recent(ip, rate.window, now)
            if times is None:
                if len(self._failures) >= MAX_TRACKED_IPS:
                    self._prune(rate.window, now)
                times = self._failures[ip] = deque()
            times.append(now)
            return len(times)

    def _prune(self, window: float, now: float) -> None:
        for ip in list(self._failures):
            self._recent(ip, window, now)
        if len(self._failures) >= MAX_TRACKED_IPS:      # still full: forget the oldest
            oldest = sorted(self._failures, key=lambda key: self._failures[key][-1])
            for ip in oldest[:len(oldest) // 2]:
                del self._failures[ip]


@dataclass(frozen=True)
class LoginResult:
    mailbox: str | None     # None: refused
    reason: str             # for the log, never shown to the client beyond a generic reply
    locked: bool = False    # refused because of the auth_failures lock-out


class Authenticator:
    """Checks login name + password, with the shared lock-out and verify cache."""

    def __init__(self, throttle: AuthThrottle, cache: passwords.VerifyCache):
        self.throttle = throttle
        self.cache = cache
        # Each scrypt check takes 16 MiB and a core for ~25 ms: a crowd of
        # strangers guessing at once must not add up to gigabytes.
        self._kdf_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def locked(self, config: Config, ip: str) -> bool:
        return self.throttle.locked(ip, config.limits.auth_failures)

    def login(self, router: Router, ip: str, name: str, password: str) -> LoginResult:
        rate = router.config.limits.auth_failures
        if self.throttle.locked(ip, rate):
            return LoginResult(None, "too many failed logins from this address", locked=True)
        mailbox = router.login(name)
        line = router.config.mailboxes.get(mailbox) if mailbox else None
        if line is None:
            with self._kdf_slots:
                passwords.verify(password, _DUMMY_HASH)  # same cost as a real check
            reason = "no such mailbox"
        elif self.cache.verify(password, line, self._kdf_slots):
            return LoginResult(mailbox, "ok")
        else:
            reason = "wrong password"
        count = self.throttle.record_failure(ip, rate)
        return LoginResult(None, f"{reason} (failure {count} of {rate.count} "
                                 f"allowed in {rate})")
