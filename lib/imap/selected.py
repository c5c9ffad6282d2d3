"""The selected folder as one session sees it: message sequence numbers, the
flags last told to the client, and the untagged EXISTS / EXPUNGE / FETCH
responses that bring the client up to date when the folder changed.

Sequence numbers are positions in `uids`. A message another session (or
POP3) removed stays in the view, marked, until an EXPUNGE may be sent: never
while answering FETCH, STORE or SEARCH (RFC 9051 7.5.1), since the client's
numbers would shift under the command. EXPUNGE responses are sent from the
highest number down, so each number is still right when the client reads it.
"""

from __future__ import annotations

import bisect
from array import array

from ..core.errors import Reject
from ..core.replies import IMAP_NO_SUCH_MESSAGE, ImapData
from ..store.folderindex import FolderIndex, Snapshot
from . import render
from .items import STAR, SequenceSet


class ValidityChanged(Exception):
    """The folder's UID list was lost and remade: the client must start again."""


class Selected:
    def __init__(self, name: str, index: FolderIndex, read_only: bool, rev2: bool):
        self.name = name
        self.index = index
        self.read_only = read_only
        self.rev2 = rev2                  # IMAP4rev2 enabled: no RECENT responses
        snapshot, moved = index.sync(claim=not read_only)
        self.snapshot = snapshot
        self.validity = snapshot.uidvalidity
        self.uidnext = snapshot.uidnext
        self.uids = array("I", snapshot.uids)
        self.flags = bytearray(snapshot.flags)
        self.recent: set[int] = set(moved)
        self.vanished: set[int] = set()   # gone from the folder, EXPUNGE not yet sent
        self.saved: list[int] = []        # SEARCH RETURN (SAVE): UIDs (RFC 5182)

    @property
    def count(self) -> int:
        return len(self.uids)

    def position(self, uid: int) -> int | None:
        """The 0-based position of a UID in the view."""
        at = bisect.bisect_left(self.uids, uid)
        return at if at < len(self.uids) and self.uids[at] == uid else None

    def first_unseen(self) -> int | None:
        for position, mask in enumerate(self.flags):
            if not mask & 8:
                return position + 1
        return None

    # ------------------------------------------------------------ sequence sets

    def resolve(self, messages: SequenceSet, by_uid: bool) -> list[int]:
        """Positions (0-based, ascending) named by a sequence set of numbers or
        UIDs. Numbers out of range are a BAD (RFC 9051 6.4.8 makes missing UIDs
        simply match nothing)."""
        if messages.saved:                    # RFC 5182 2.1: nothing saved yet is empty
            found = (self.position(uid) for uid in self.saved)
            return sorted(p for p in found if p is not None)
        if by_uid:
            return self._by_uid(messages)
        count = len(self.uids)
        chosen: set[int] = set()
        for low, high in messages.ranges:
            low, high = low or count, high or count
            if low > high:
                low, high = high, low
            if low < 1 or high > count:
                raise Reject(IMAP_NO_SUCH_MESSAGE)
            chosen.update(range(low - 1, high))
        return sorted(chosen)

    def _by_uid(self, messages: SequenceSet) -> list[int]:
        uids = self.uids
        if not uids:
            return []
        largest = uids[-1]
        chosen: set[int] = set()
        for low, high in messages.ranges:
            low = largest if low == STAR else low
            high = largest if high == STAR else high
            if low > high:
                low, high = high, low
            start = bisect.bisect_left(uids, low)
            end = bisect.bisect_right(uids, high)
            chosen.update(range(start, end))
        return sorted(chosen)

    # ------------------------------------------------------------ changes

    def refresh(self, allow_expunge: bool, with_uid: bool = False,
                fast: bool = False) -> list[ImapData]:
        """Look at the folder again (`fast`: see FolderIndex.sync); the untagged
        responses that tell the client."""
        snapshot, moved = self.index.sync(claim=not self.read_only, fast=fast)
        self.recent |= moved
        out: list[ImapData] = []
        if snapshot is not self.snapshot:
            if snapshot.exists and snapshot.uidvalidity != self.validity:
                raise ValidityChanged()
            out += self._merge(snapshot, with_uid)
            self.snapshot = snapshot
        if allow_expunge and self.vanished:     # after the rest: their numbers are the old ones
            out += self._expunges()
        return out

    def _merge(self, snapshot: Snapshot, with_uid: bool) -> list[ImapData]:
        out: list[ImapData] = []
        uids, flags = self.uids, self.flags
        current = snapshot.uids
        if len(current) >= len(uids) and current[:len(uids)] == uids:
            common = len(uids)                        # nothing gone: the usual case
            positions = range(common)
            fresh = range(common, len(current))
            if flags != snapshot.flags[:common]:
                same = zip(positions, positions, strict=True)
                out += self._flag_changes(same, snapshot, with_uid)
        else:
            at = {uid: i for i, uid in enumerate(current)}
            pairs = []
            for position, uid in enumerate(uids):
                found = at.get(uid)
                if found is None:
                    self.vanished.add(uid)
                else:
                    pairs.append((position, found))
            out += self._flag_changes(iter(pairs), snapshot, with_uid)
            highest = uids[-1] if uids else 0
            start = bisect.bisect_right(current, highest)
            fresh = range(start, len(current))
        if len(fresh):
            uids.extend(current[fresh.start:fresh.stop])
            flags.extend(snapshot.flags[fresh.start:fresh.stop])
            out.append(ImapData(b"%d EXISTS" % len(uids)))
            if not self.rev2:
                out.append(ImapData(b"%d RECENT" % len(self.recent)))
        self.uidnext = snapshot.uidnext
        return out

    def _flag_changes(self, pairs, snapshot: Snapshot, with_uid: bool) -> list[ImapData]:
        out = []
        flags, current = self.flags, snapshot.flags
        for position, found in pairs:
            if flags[position] != current[found]:
                flags[position] = current[found]
                out.append(self.flags_response(position, with_uid))
        return out

    def flags_response(self, position: int, with_uid: bool = False) -> ImapData:
        uid = self.uids[position]
        text = render.flags(self.flags[position], uid in self.recent)
        prefix = b"%d FETCH (UID %d FLAGS " % (position + 1, uid) if with_uid else \
            b"%d FETCH (FLAGS " % (position + 1)
        return ImapData(prefix + text + b")")

    def _expunges(self) -> list[ImapData]:
        gone = sorted((i for i, uid in enumerate(self.uids) if uid in self.vanished),
                      reverse=True)
        out = [ImapData(b"%d EXPUNGE" % (position + 1)) for position in gone]
        keep = [i for i, uid in enumerate(self.uids) if uid not in self.vanished]
        self.uids = array("I", (self.uids[i] for i in keep))
        self.flags = bytearray(self.flags[i] for i in keep)
        self.recent -= self.vanished
        self.vanished = set()
        return out
