"""Who a client is and what it may do: trust, relay rights, logins and their
rate limit, connection caps, and the content filter.

SMTP and POP3 share everything here, so a rule (plaintext_auth, the
auth_failures lock-out) means the same on every port.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import passwords, replies
from .config import Config, Rate
from .replies import Reply
from .router import Router

# A hash of a random password nobody knows: an unknown login name is checked
# against it, so it costs as long as a known one and does not reveal the name.
_DUMMY_HASH = "$scrypt$ln=14,r=8,p=1$7ot5dATHLB8TFdp8uh4joA$iSQIP7DFQvp1MI0DBPvRjHkBQ2X5wvlsSTgnAFc554s"
MAX_TRACKED_IPS = 10_000        # bound on the failure table under a distributed attack


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_trusted(config: Config, ip: str) -> bool:
    """Is `ip` in [policy] trusted_networks (may relay without AUTH, skips the filter)?"""
    address = ip_of(ip)
    return address is not None and any(address in net for net in config.policy.trusted_networks)


def is_loopback(ip: str) -> bool:
    address = ip_of(ip)
    return address is not None and address.is_loopback


def plaintext_auth_allowed(config: Config, ip: str, tls_active: bool) -> bool:
    """May a password travel on this connection ([tls] plaintext_auth)?"""
    if tls_active:
        return True
    mode = config.tls.plaintext_auth
    return mode == "always" or (mode == "local" and is_loopback(ip))


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


# ---------------------------------------------------------------- content filter

@dataclass(frozen=True)
class FilterVerdict:
    reply: Reply | None     # None: accepted
    detail: str             # for the log


def run_filter(config: Config, message: Path, environment: dict[str, str]) -> FilterVerdict:
    """Run [policy] filter_command with the message on stdin.

    Exit 0 accepts, exit 1 rejects (550 5.7.1), anything else — another exit
    code, a crash, a timeout, a missing program — is a temporary failure
    (451 4.7.1): a broken filter must delay mail, never lose or pass it.
    The filter runs in a process group of its own, so on timeout everything
    it started is killed; only its own exit is waited for, so a helper it
    leaves running in the background does not hold the message up.
    """
    command = config.policy.filter_command
    env = {**os.environ, **environment}
    try:
        with open(message, "rb") as stdin, tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL,
                                       stderr=stderr, env=env, close_fds=True,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=config.policy.filter_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return FilterVerdict(replies.FILTER_TEMPFAIL,
                                     f"filter timed out after {config.policy.filter_timeout:g}s")
            stderr.seek(0)
            said = stderr.read(4096).decode("utf-8", "replace").strip().splitlines()
    except OSError as error:
        return FilterVerdict(replies.FILTER_TEMPFAIL, f"filter could not run: {error}")
    detail = f"filter exit {code}" + (f": {said[0][:200]}" if said else "")
    if code == 0:
        return FilterVerdict(None, detail)
    if code == 1:
        return FilterVerdict(replies.FILTER_REJECTED, detail)
    return FilterVerdict(replies.FILTER_TEMPFAIL, detail)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
