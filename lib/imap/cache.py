"""What IMAP learns from reading a message (its ENVELOPE, its MIME structure),
kept by the file's unique name and shared by the sessions of a process, in
a cache bounded by an estimate of the memory it holds (least recently used
entries go first). A file's unique name changes whenever its content could
(a copy or a move gets a new one), so an entry never goes stale."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from ..store.folders import MailStore

CACHE_BYTES = 48 * 1024 * 1024     # about 100,000 envelopes, or 40,000 structures
ENTRY_OVERHEAD = 200               # the key, the tuple, the dict slot


class MessageCache:
    _registry: weakref.WeakKeyDictionary[MailStore, MessageCache] = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit = limit
        self.used = 0
        self._entries: OrderedDict[tuple[str, str], tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, store: MailStore) -> MessageCache:
        """The one cache of a MailStore (made on first use)."""
        with cls._registry_lock:
            cache = cls._registry.get(store)
            if cache is None:
                cache = cls._registry[store] = cls()
            return cache

    def get(self, kind: str, name: str) -> object | None:
        with self._lock:
            entry = self._entries.get((kind, name))
            if entry is None:
                return None
            self._entries.move_to_end((kind, name))
            return entry[0]

    def put(self, kind: str, name: str, value: object, cost: int) -> None:
        cost += ENTRY_OVERHEAD + len(name)
        if cost > self.limit // 8:
            return                       # one huge entry must not flush everything else
        with self._lock:
            old = self._entries.pop((kind, name), None)
            if old is not None:
                self.used -= old[1]
            self._entries[(kind, name)] = (value, cost)
            self.used += cost
            while self.used > self.limit and self._entries:
                _, (_, freed) = self._entries.popitem(last=False)
                self.used -= freed
