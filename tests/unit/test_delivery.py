"""Delivery helpers that need no network: next hops without dnspython, reply texts."""

from __future__ import annotations

import sys

import pytest

from lib.core.errors import TemporaryFailure
from lib.outbound.delivery import HopFinder

from ..support import BASE_INI


def test_missing_dnspython_is_a_temporary_failure_that_names_the_package(load, monkeypatch):
    cfg = load(BASE_INI)
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    with pytest.raises(TemporaryFailure) as caught:
        HopFinder(cfg).hops("remote.example")
    assert "dnspython" in str(caught.value) and "python3-dnspython" in str(caught.value)


def test_routes_and_literals_need_no_dns(load, monkeypatch):
    cfg = load(BASE_INI + "\n[routes]\nlan.example = 127.0.0.1:2525\n[relay]\nmx_port = 2626\n")
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    (hop,) = HopFinder(cfg).hops("lan.example")
    assert (hop.addresses, hop.port, hop.kind) == (("127.0.0.1",), 2525, "route")
    (hop,) = HopFinder(cfg).hops("[127.0.0.1]")
    assert (hop.addresses, hop.port) == (("127.0.0.1",), 2626)


class App:
    """What the queue runner needs from the daemon."""

    def __init__(self, runtime, services):
        self.runtime = runtime
        self.services = services


@pytest.fixture
def runner(tmp_path):
    from lib.outbound import delivery
    from lib.session.runtime import Services, load_runtime

    from ..support import ini
    path = tmp_path / "d.ini"
    path.write_text(ini(BASE_INI + "\n[routes]\nremote.example = 127.0.0.1:9\n"))
    runtime = load_runtime(path)
    return delivery.QueueRunner(App(runtime, Services.create(runtime.config)))


def queue_one(runner, *recipients):
    import time

    from lib.store.spool import Envelope, Recipient, new_id
    temp = runner.spool.begin()
    temp.write(b"Subject: out\n\nbody\n")
    envelope = Envelope(new_id(), "alice@example.org", [Recipient(r) for r in recipients],
                        time.time())
    return runner.spool.commit(temp, envelope, announce=False)


def test_a_bounce_that_cannot_be_written_is_retried_without_delivering_again(runner,
                                                                            monkeypatch):
    from lib.outbound import delivery
    sent = []

    def remote_answers(runtime, hop, address, sender, recipients, path, utf8, cache=None):
        sent.extend(recipients)
        return delivery.Outcome(replies={r: ("550 5.1.1 no such user" if r.startswith("bad")
                                             else "250 2.0.0 ok") for r in recipients},
                                relay="mx[127.0.0.1]:9")
    monkeypatch.setattr(delivery, "transact", remote_answers)
    def disk_full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(delivery, "send_dsn", disk_full)
    queue_id = queue_one(runner, "good@remote.example", "bad@remote.example")
    when = runner.attempt(queue_id)
    assert when is not None and sent == ["good@remote.example", "bad@remote.example"]
    saved = {r.address: (r.state, r.reported) for r in runner.spool.load(queue_id).recipients}
    assert saved == {"good@remote.example": ("delivered", False),
                     "bad@remote.example": ("failed", False)}
    bounces = []
    monkeypatch.setattr(delivery, "send_dsn", lambda *a: bounces.append(a[3]) or "DSN")
    assert runner.attempt(queue_id) is None                  # reported, entry gone
    assert [r.address for r in bounces[0]] == ["bad@remote.example"]
    assert sent == ["good@remote.example", "bad@remote.example"]   # nobody twice
    assert runner.spool.ids() == []


class FakeClient:
    def __init__(self):
        self.closed = False

    def quit(self):
        self.closed = True


def test_connection_cache_expires_idle_and_worn_connections():
    from lib.outbound.delivery import ConnectionCache
    cache = ConnectionCache(idle=0.1, uses=3)
    first = FakeClient()
    cache.put(("mx", "a"), first, "TLSv1.3", 1)
    assert cache.take(("mx", "a")) == (first, "TLSv1.3", 1)
    assert cache.take(("mx", "a")) is None            # taken: not shared between users
    worn = FakeClient()
    cache.put(("mx", "b"), worn, None, 3)             # used its allowance: closed at once
    assert worn.closed and cache.take(("mx", "b")) is None
    idle = FakeClient()
    cache.put(("mx", "c"), idle, None, 1)
    import time
    time.sleep(0.15)
    cache.expire()
    assert idle.closed and cache.take(("mx", "c")) is None


def test_the_backlog_told_to_the_intake_counts_due_and_in_flight_entries(runner):
    import time
    seen = []
    runner.app.services.flow.update = seen.append
    runner._schedule("A" * 16, 0.0)
    runner._schedule("B" * 16, 0.0)
    runner._schedule("C" * 16, time.time() + 3600)     # deferred: not a backlog
    runner._schedule("A" * 16, 5.0)                     # later than already due: ignored
    assert runner._next() == "A" * 16
    assert seen[-1] == 2                                # B waiting, A in flight
    assert runner._next() == "B" * 16
    assert seen[-1] == 2                                # both in flight
    assert runner._next() is None                       # C is not due for an hour
