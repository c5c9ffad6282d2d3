"""Policy: trust, plaintext-auth rule, login lock-out, connection caps."""

from __future__ import annotations

import os

import pytest

from lib.checks import logins
from lib.checks.connections import ConnectionTracker
from lib.checks.inflow import InFlow
from lib.checks.logins import Authenticator, AuthThrottle
from lib.checks.trust import is_trusted, plaintext_auth_allowed
from lib.config.router import Router
from lib.config.schema import Rate
from lib.core import passwords

from ..helpers.ini import PASSWORD, config_text


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def cfg(load):
    return load(config_text(trusted="192.168.1.0/24, 2001:db8::/32", limits="""
        max_connections = 3
        max_connections_per_ip = 2
        auth_failures = 3/1m
        """))


def test_trusted_networks(cfg):
    assert is_trusted(cfg, "192.168.1.20")
    assert is_trusted(cfg, "::ffff:192.168.1.20")      # v4-mapped from a [::] socket
    assert is_trusted(cfg, "2001:db8::5")
    assert not is_trusted(cfg, "192.168.2.1")
    assert not is_trusted(cfg, "127.0.0.1")
    assert not is_trusted(cfg, "not an ip")


def test_plaintext_auth_rule(load):
    for mode, loopback, remote in (("never", False, False), ("local", True, False),
                                   ("always", True, True)):
        cfg = load(config_text(plaintext_auth=mode))
        assert plaintext_auth_allowed(cfg, "127.0.0.1", False) is loopback
        assert plaintext_auth_allowed(cfg, "::1", False) is loopback
        assert plaintext_auth_allowed(cfg, "192.0.2.1", False) is remote
        assert plaintext_auth_allowed(cfg, "192.0.2.1", True) is True


def test_throttle_window_slides():
    clock = Clock()
    throttle = AuthThrottle(clock)
    rate = Rate(3, 60)
    for _ in range(3):
        assert not throttle.locked("1.2.3.4", rate)
        throttle.record_failure("1.2.3.4", rate)
    assert throttle.locked("1.2.3.4", rate)
    assert not throttle.locked("5.6.7.8", rate)
    clock.now += 59
    assert throttle.locked("1.2.3.4", rate)
    clock.now += 2
    assert not throttle.locked("1.2.3.4", rate)


def test_throttle_table_is_bounded(monkeypatch):
    monkeypatch.setattr(logins, "MAX_TRACKED_IPS", 10)
    throttle = AuthThrottle(Clock())
    for i in range(50):
        throttle.record_failure(f"10.0.0.{i}", Rate(5, 600))
    assert len(throttle._failures) <= 10


def test_connection_tracker(cfg):
    tracker = ConnectionTracker()
    assert tracker.open("a", cfg) is None
    assert tracker.open("a", cfg) is None
    assert tracker.open("a", cfg).code == 421                 # per IP
    assert tracker.open("b", cfg) is None
    assert tracker.open("c", cfg).code == 421                 # in total
    tracker.close("a")
    assert tracker.count("a") == 1 and tracker.total == 2
    assert tracker.open("c", cfg) is None


def test_authenticator(cfg):
    router = Router(cfg)
    auth = Authenticator(AuthThrottle(Clock()), passwords.VerifyCache())
    assert auth.login(router, "1.1.1.1", "BHayden", PASSWORD).mailbox == "bhayden"
    assert auth.login(router, "1.1.1.1", "bhayden@example.net", PASSWORD).mailbox == "bhayden"
    wrong = auth.login(router, "1.1.1.1", "bhayden", "nope")
    assert wrong.mailbox is None and "wrong password" in wrong.reason
    unknown = auth.login(router, "1.1.1.1", "ghost", PASSWORD)
    assert unknown.mailbox is None and "no such mailbox" in unknown.reason
    assert "nope" not in wrong.reason and PASSWORD not in unknown.reason
    auth.login(router, "1.1.1.1", "bhayden", "again")
    locked = auth.login(router, "1.1.1.1", "bhayden", PASSWORD)
    assert locked.mailbox is None and locked.locked
    assert auth.login(router, "2.2.2.2", "bhayden", PASSWORD).mailbox == "bhayden"


def test_in_flow_admits_at_once_below_the_limit_and_waits_above_it():
    import threading
    flow = InFlow(limit=2, max_delay=5.0)
    assert flow.admit() == 0.0
    flow.update(3)                                   # delivery lags
    threading.Timer(0.2, flow.update, args=(1,)).start()
    waited = flow.admit()
    assert 0.15 <= waited < 2.0                      # released when the backlog shrank
    flow = InFlow(limit=0, max_delay=0.2)
    flow.update(5)
    assert 0.15 <= flow.admit() < 1.0                # never longer than max_delay


def test_scrypt_checks_run_at_most_a_few_at_a_time(cfg, monkeypatch):
    import threading
    import time
    router = Router(cfg)
    auth = Authenticator(AuthThrottle(Clock()), passwords.VerifyCache())
    running, peak, lock = [0], [0], threading.Lock()

    def slow_verify(password, line):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return False
    monkeypatch.setattr(passwords, "verify", slow_verify)
    threads = [threading.Thread(target=auth.login, args=(router, f"10.0.0.{n}", name, "x"))
               for n in range(12) for name in ("bhayden", "ghost")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert 1 <= peak[0] <= max(2, os.cpu_count() or 2)
