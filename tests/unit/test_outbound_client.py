"""The connection cache of the SMTP client."""

from __future__ import annotations


class FakeClient:
    def __init__(self):
        self.closed = False

    def quit(self):
        self.closed = True


def test_connection_cache_expires_idle_and_worn_connections():
    from lib.outbound.client import ConnectionCache
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
