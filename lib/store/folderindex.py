"""One Maildir folder as IMAP sees it: persistent UIDs (the `imap-uidlist`
file), flags in the file names, and the changes IMAP makes (flags, expunge,
new files from APPEND, COPY and MOVE).

The UID list keeps Dovecot's `dovecot-uidlist` format (version 3): a header
`3 V<uidvalidity> N<uidnext>`, then one `<uid> :<unique part>` line per
message, the unique part being the file name before its `:2,` flags. A flag
change renames the file but keeps that part, so UIDs (and POP3's UIDL, the
part before the first ",") never change for a message that did not change.
New lines are appended (a torn last line is ignored on reading; UIDNEXT is
then at least one past the highest UID seen); the file is rewritten through
a temporary file and rename when entries of expunged messages must go, or
it is new. Either happens under an flock on `imap-uidlist.lock` in the
folder, taken by whichever session (of any process) first sees a file
without a UID. A session that selects the folder read-write moves files in
new/ to cur/ (as Dovecot does) and may call them \\Recent; a few hundred at
once, more (a first SELECT of a big inbox) by a helper process once the
session rests.

After FETCH, STORE, SEARCH and COPY a look is skipped when the last one is
under FAST_SYNC_SECONDS old (Dovecot's "fast" sync); NOOP, IDLE and SELECT
always look. The folder is listed only when new/, cur/ or the UID list
changed since the last look (mtimes, inode, size), and only trusted
unchanged once the folders have been still for STABLE_FOLDER_NS (mtimes are
coarse), or FINE_STILL_NS where they have sub-second parts. A listing is
compared with the last one as sets of names, so a flag change costs two
readdirs and a set difference, not a rebuild of 10,000 entries. One
FolderIndex per folder and process is shared by every session
(`folders.MailStore`); it knows each message's current file name, so a
rename by one session is no surprise to another.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from ..core.durable import DirSyncer, replace_durably
from .maildir import STABLE_FOLDER_NS, delivery_order, pop3_size_of_file, size_field

T = TypeVar("T")
UIDLIST = "imap-uidlist"
UIDLIST_LOCK = "imap-uidlist.lock"
DOVECOT_UIDLIST = "dovecot-uidlist"           # read once when a folder has no list of ours
# Maildir info letters of the IMAP system flags, as bits of one byte per message.
FLAG_LETTERS = {"D": 1, "F": 2, "R": 4, "S": 8, "T": 16}
FLAG_NAMES = {1: "\\Draft", 2: "\\Flagged", 4: "\\Answered", 8: "\\Seen", 16: "\\Deleted"}
SEEN, DELETED = FLAG_LETTERS["S"], FLAG_LETTERS["T"]
_last_validity = 0
_validity_lock = threading.Lock()


def flags_of(name: str) -> int:
    """The flag bits of a file name's `:2,` info."""
    _, _, info = name.partition(":")
    if not info.startswith("2,"):
        return 0
    mask = 0
    for letter in info[2:]:
        mask |= FLAG_LETTERS.get(letter, 0)
    return mask


def renamed(name: str, mask: int) -> str:
    """`name` in cur/ form with the flags of `mask`; other info letters are kept."""
    base, _, info = name.partition(":")
    kept = [c for c in info[2:] if c not in FLAG_LETTERS] if info.startswith("2,") else []
    letters = kept + [c for c, bit in FLAG_LETTERS.items() if mask & bit]
    return f"{base}:2,{''.join(sorted(letters))}"


def new_validity() -> int:
    """A UIDVALIDITY: the time, but never one this process gave before."""
    global _last_validity
    with _validity_lock:
        _last_validity = max(int(time.time()), _last_validity + 1)
        return _last_validity


class Snapshot(NamedTuple):
    """A folder at one moment: UIDs ascending and their flag bits, side by side."""
    uidvalidity: int
    uidnext: int
    uids: array                  # array('I')
    flags: bytes
    exists: bool = True


class FolderIndex:
    """UIDs, flags and file names of one Maildir folder (the inbox or a subfolder)."""

    def __init__(self, path: str, syncer: DirSyncer | None = None):
        self.path = path
        self.syncer = syncer or DirSyncer()
        self._lock = threading.RLock()
        self._uids: dict[str, int] = {}          # unique part -> UID (as in the file)
        self._validity = 0
        self._next = 1
        self._file_stamp: tuple | None = None    # (inode, size) of the file we read
        self._names: dict[int, tuple[str, str]] = {}   # UID -> (sub, file name) now
        self._sizes: dict[int, int] = {}         # UID -> CRLF size, for foreign files
        self._snapshot: Snapshot | None = None
        self._stamps: tuple | None = None
        self._listing: dict[str, tuple[str, str]] = {}   # unique part -> (sub, file name)
        self._seen_new: set[str] = set()         # the file names of the last listing
        self._seen_cur: set[str] = set()
        self._dirty: set[str] = set()            # renamed by us since the last look
        self._gone: set[str] = set()             # expunged, but still in the file
        self._looked_at = -FAST_SYNC_SECONDS      # monotonic time of the last real look
        self._claiming = False                   # a helper is moving new/ to cur/ meanwhile
        self._pending: list[tuple[str, str]] = []   # a big claim's files, not moved yet
        self._pending_since = 0.0

    # ------------------------------------------------------------ looking

    def sync(self, claim: bool = False, fast: bool = False) -> tuple[Snapshot, frozenset[int]]:
        r"""The folder now. With `claim` (a session that selected the folder to
        change it), files in new/ move to cur/ and their UIDs are returned: for
        that session they are \Recent. Without, new/ is left as it is.
        `fast` (after FETCH, STORE, SEARCH, COPY: Dovecot's MAILBOX_SYNC_FLAG_FAST)
        takes the last look as the folder now if it is under FAST_SYNC_SECONDS
        old and nothing of ours changed since: no system call. NOOP, IDLE,
        SELECT and a file found missing always look."""
        with self._lock:
            if self._pending and time.monotonic() - self._pending_since > CLAIM_DEFER_SECONDS:
                self._start_renamer()
            if fast and self._snapshot is not None and not self._dirty and \
                    time.monotonic() - self._looked_at < FAST_SYNC_SECONDS and \
                    not (claim and self._waiting):
                return self._snapshot, frozenset()
            stamps = self._stat()
            self._looked_at = time.monotonic()
            if stamps is None:                       # the folder was deleted
                self._forget_listing()
                return Snapshot(self._validity, self._next, array("I"), b"", False), frozenset()
            if self._snapshot is not None and stamps == self._stamps and \
                    not (claim and self._waiting):
                return self._snapshot, frozenset()
            changed, gone = self._relist()
            changed |= self._dirty - gone
            self._dirty.clear()
            rebuild = self._load() or self._snapshot is None or bool(gone)
            candidates = self._listing.keys() if rebuild else changed
            fresh = any(base not in self._uids for base in candidates)
            moved: frozenset[int] = frozenset()
            if fresh or (claim and self._waiting) or self._validity == 0 or \
                    self._file_stamp is None:
                with self._flock():
                    self._load()
                    moved = self._take_in(claim)
                rebuild = True
            snapshot = self._build() if rebuild else self._update(changed)
            if not _still(stamps[0], stamps[1]):
                stamps = None                  # changed too recently to trust the mtimes
            self._snapshot, self._stamps = snapshot, stamps
            return snapshot, moved

    def _stat(self) -> tuple | None:
        try:
            new, cur = (os.stat(os.path.join(self.path, sub)) for sub in ("new", "cur"))
        except FileNotFoundError:
            return None
        try:
            listed = os.stat(os.path.join(self.path, UIDLIST))
            file_stamp: tuple = (listed.st_ino, listed.st_size, listed.st_mtime_ns)
        except FileNotFoundError:
            file_stamp = ()
        return new.st_mtime_ns, cur.st_mtime_ns, new.st_ino, cur.st_ino, file_stamp

    def _forget_listing(self) -> None:
        self._names, self._snapshot, self._listing = {}, None, {}
        self._seen_new, self._seen_cur = set(), set()

    def _files(self, sub: str) -> set[str]:
        try:
            return {name for name in os.listdir(os.path.join(self.path, sub)) if name[:1] != "."}
        except FileNotFoundError:
            return set()

    def _relist(self) -> tuple[set[str], set[str]]:
        """List new/ (first, so a file moving to cur/ is seen at least once) and
        cur/; bring `_listing` up to date by the difference to the last listing.
        Returns the unique parts that appeared or were renamed, and those gone.
        A rename can hide a file from one readdir, so before a file is believed
        gone the folder is listed once more."""
        changed, gone = self._difference(self._files("new"), self._files("cur"))
        if gone:
            again_changed, again_gone = self._difference(self._files("new"), self._files("cur"))
            changed |= again_changed
            gone |= again_gone
        listing = self._listing
        return {b for b in changed if b in listing}, {b for b in gone if b not in listing}

    def _difference(self, new: set[str], cur: set[str]) -> tuple[set[str], set[str]]:
        listing = self._listing
        removed: set[str] = set()
        added: set[str] = set()
        for sub, now, before in (("new", new, self._seen_new), ("cur", cur, self._seen_cur)):
            for name in before - now:
                base = name.partition(":")[0]
                if listing.get(base) == (sub, name):
                    del listing[base]
                    removed.add(base)
        for sub, now, before in (("new", new, self._seen_new), ("cur", cur, self._seen_cur)):
            for name in now - before:
                base = name.partition(":")[0]
                listing[base] = (sub, name)
                added.add(base)
        self._seen_new, self._seen_cur = new, cur
        return added, removed

    def _build(self) -> Snapshot:
        """The snapshot made afresh from the listing and the UID list."""
        uids = self._uids
        listing = self._listing
        for base in [base for base in uids if base not in listing]:
            del uids[base]                      # should the name come back, it is a new message
            self._gone.add(base)
        pairs = sorted((uids[base], entry) for base, entry in listing.items() if base in uids)
        self._names = dict(pairs)
        for uid in [uid for uid in self._sizes if uid not in self._names]:
            del self._sizes[uid]
        cache: dict[str, int] = {}
        flags = bytearray(len(pairs))
        for i, (_, (_, name)) in enumerate(pairs):
            info = name[name.find(":"):] if ":" in name else ""
            mask = cache.get(info)
            if mask is None:
                mask = cache[info] = flags_of(name)
            flags[i] = mask
        return Snapshot(self._validity, self._next, array("I", [uid for uid, _ in pairs]),
                        bytes(flags))

    def _update(self, changed: set[str]) -> Snapshot:
        """The last snapshot with the flags of renamed files changed (the usual
        case: only flags changed); a full build when a UID is not in it."""
        snapshot = self._snapshot
        if snapshot is None:
            return self._build()
        uids, flags = snapshot.uids, bytearray(snapshot.flags)
        for base in changed:
            uid = self._uids[base]
            entry = self._listing[base]
            at = bisect.bisect_left(uids, uid)
            if at == len(uids) or uids[at] != uid:
                return self._build()
            self._names[uid] = entry
            flags[at] = flags_of(entry[1])
        return snapshot._replace(flags=bytes(flags))

    # ------------------------------------------------------------ the UID list

    def _load(self) -> bool:
        """Read the UID list again if another session (or process) changed it;
        True when the UIDs it holds may have changed. A folder that Dovecot
        served before has no list of ours yet: Dovecot's is read instead (the
        same format), so clients keep their UIDs across the move."""
        path = os.path.join(self.path, UIDLIST)
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if stamp == self._file_stamp:
                    return False
                data = handle.read()
        except FileNotFoundError:
            if self._file_stamp is None:
                return self._validity == 0 and self._import(DOVECOT_UIDLIST)
            self._uids, self._validity, self._next = {}, 0, 1    # it was deleted: start again
            self._file_stamp = None
            return True
        if not self._parse(data):
            self._uids, self._validity, self._next = {}, 0, 1
            self._file_stamp = None                   # unreadable: rewritten when next needed
            return True
        self._file_stamp = stamp
        return True

    def _import(self, name: str) -> bool:
        """Another server's list, when there is one; ours is written from it soon."""
        try:
            with open(os.path.join(self.path, name), "rb") as handle:
                data = handle.read()
        except OSError:
            return False
        return self._parse(data)

    def _parse(self, data: bytes) -> bool:
        """Take the UIDs of a list in the version 3 format; False if it is not one."""
        lines = data.split(b"\n")
        if data[-1:] != b"\n":
            lines.pop()                               # a torn last line: never used
        header = lines[0].split() if lines else []
        fields = {item[:1]: item[1:] for item in header[1:]}
        if header[:1] != [b"3"] or not fields.get(b"V", b"").isdigit():
            return False
        uids: dict[str, int] = {}
        highest = 0
        for line in lines[1:]:
            number, _, rest = line.partition(b" ")
            base = rest.rpartition(b":")[2] if b":" in rest else b""
            if number.isdigit() and base and int(number) > highest:
                highest = int(number)
                uids[base.decode("utf-8", "surrogateescape")] = highest
        self._gone &= uids.keys()
        for expunged in self._gone:
            del uids[expunged]
        self._uids = uids
        self._validity = int(fields[b"V"])
        given = fields.get(b"N", b"")
        self._next = max(int(given) if given.isdigit() else 1, highest + 1)
        return True

    def _take_in(self, claim: bool) -> frozenset[int]:
        """Under the lock: UIDs for files without one, in delivery order; with
        `claim`, new/ to cur/."""
        listing = self._listing
        fresh = [base for base in listing if base not in self._uids]
        fresh.sort(key=lambda base: delivery_order(self.path, listing[base][1]))
        added = []
        for base in fresh:
            self._uids[base] = self._next
            added.append((self._next, base))
            self._next += 1
        moved = self._claim() if claim else []
        if self._validity == 0 or self._file_stamp is None or self._gone or \
                any(base not in listing for base in self._uids):
            self._rewrite()                     # new, or entries of expunged messages to drop
        elif added:
            self._append(added)
        return frozenset(moved)

    @property
    def _waiting(self) -> bool:
        """Files in new/ that no claim covers yet."""
        return bool(self._seen_new) and not self._claiming and not self._pending

    def _claim(self) -> list[int]:
        r"""new/ to cur/: the UIDs (\Recent for the claiming session). A few files
        move at once. More than CLAIM_AT_ONCE (a first SELECT of a big inbox)
        wait until the session rests (`release_claim`: IDLE, another folder,
        logout) or CLAIM_DEFER_SECONDS pass, and are then moved by a helper
        process: a SELECT does not wait for thousands of renames, and the
        client's first FETCHes do not race them for the directories' locks.
        A file is found wherever it is meanwhile (`_follow`)."""
        listing = self._listing
        waiting = [(base, name) for base, (sub, name) in listing.items() if sub == "new"]
        if not waiting or self._claiming or self._pending:   # newcomers: the next claim's
            return []
        if len(waiting) <= CLAIM_AT_ONCE:
            return self._move_to_cur(waiting)
        self._pending, self._pending_since = waiting, time.monotonic()
        return [self._uids[base] for base, _ in waiting]

    def release_claim(self) -> None:
        """A session rests (or leaves the folder): a big claim waiting for that
        starts now."""
        with self._lock:
            if self._pending:
                self._start_renamer()

    @property
    def claiming(self) -> bool:
        """Are files of a big claim still waiting or moving?"""
        return self._claiming or bool(self._pending)

    def _start_renamer(self) -> None:
        """Under the lock: the helper that moves the pending files."""
        waiting, self._pending = self._pending, []
        pairs = b"".join(os.fsencode(name) + b"\0" + os.fsencode(renamed(name, flags_of(name)))
                         + b"\0" for _, name in waiting)
        try:
            helper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _RENAMER, os.path.join(self.path, "new"),
                 os.path.join(self.path, "cur")], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, close_fds=True)
        except OSError:
            self._move_to_cur(waiting)
            return
        self._claiming = True
        threading.Thread(target=self._await_renamer, args=(helper, pairs, waiting), daemon=True,
                         name="imap-claim").start()

    def _await_renamer(self, helper: subprocess.Popen, pairs: bytes,
                       waiting: list[tuple[str, str]]) -> None:
        """Wait for the helper, then note every move it made (it names the files
        it could not move), so that sessions open them in cur/ straight away."""
        failed: set[str] | None = None               # None: the helper did not run
        try:
            out, _ = helper.communicate(pairs)
            if helper.returncode == 0:
                failed = {os.fsdecode(name) for name in out.split(b"\0") if name}
        except OSError:
            helper.kill()
            helper.wait()
        finally:
            with self._lock:
                self._claiming = False
                if failed is None:                   # no interpreter for it, say: move here
                    self._move_to_cur(waiting)
                else:
                    for base, name in waiting:
                        if name not in failed and self._listing.get(base) == ("new", name):
                            self._moved(base, name, renamed(name, flags_of(name)))

    def _moved(self, base: str, name: str, target: str) -> int | None:
        """Note that new/`name` is now cur/`target`; its UID."""
        self._listing[base] = ("cur", target)
        self._seen_new.discard(name)
        self._seen_cur.add(target)
        uid = self._uids.get(base)
        if uid is not None and self._names.get(uid) == ("new", name):
            self._names[uid] = ("cur", target)
        return uid

    def _move_to_cur(self, files: list[tuple[str, str]]) -> list[int]:
        """Rename (base, name) pairs still in new/ as last seen; the UIDs moved."""
        listing = self._listing
        moved = []
        with self._new_and_cur() as (new_fd, cur_fd):
            for base, name in files:
                if listing.get(base) != ("new", name):
                    continue                      # moved or removed meanwhile
                target = renamed(name, flags_of(name))
                try:
                    os.rename(name, target, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                except FileNotFoundError:         # POP3 took it, or moved it to cur/
                    continue                      # (the next listing will tell)
                uid = self._moved(base, name, target)
                if uid is not None:
                    moved.append(uid)
        return moved

    @contextlib.contextmanager
    def _new_and_cur(self) -> Iterator[tuple[int, int]]:
        """new/ and cur/ open: renames relative to them make the kernel walk one
        name per file, not the whole path."""
        new_fd = os.open(os.path.join(self.path, "new"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            cur_fd = os.open(os.path.join(self.path, "cur"), os.O_RDONLY | os.O_DIRECTORY)
            try:
                yield new_fd, cur_fd
            finally:
                os.close(cur_fd)
        finally:
            os.close(new_fd)

    def _append(self, added: list[tuple[int, str]]) -> None:
        path = os.path.join(self.path, UIDLIST)
        data = "".join(f"{uid} :{base}\n" for uid, base in added).encode("utf-8",
                                                                         "surrogateescape")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            os.fsync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        self._file_stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _rewrite(self) -> None:
        """The whole list again, without the messages that are gone."""
        if self._validity == 0:
            self._validity = new_validity()
        listing = self._listing
        self._uids = {base: uid for base, uid in self._uids.items() if base in listing}
        self._gone.clear()
        lines = [f"3 V{self._validity} N{self._next}\n"]
        lines += [f"{uid} :{base}\n" for base, uid in sorted(self._uids.items(),
                                                            key=lambda item: item[1])]
        path = os.path.join(self.path, UIDLIST)
        replace_durably(path, "".join(lines).encode("utf-8", "surrogateescape"),
                        os.path.join(self.path, "tmp"), self.syncer)
        stat = os.stat(path)
        self._file_stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.path, UIDLIST_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                              # closing drops the flock

    # ------------------------------------------------------------ the messages' files

    @property
    def uidvalidity(self) -> int:
        return self._validity

    def flush(self) -> None:
        """Make this folder's renames durable (after STORE)."""
        self.syncer.sync(os.path.join(self.path, "cur"))

    def name_of(self, uid: int) -> tuple[str, str] | None:
        """(sub, file name) of a message as last seen; None once it is gone."""
        with self._lock:
            return self._names.get(uid)

    def filename(self, uid: int) -> str | None:
        entry = self.name_of(uid)
        return None if entry is None else os.path.join(self.path, *entry)

    def open(self, uid: int) -> int:
        """A read-only fd of the message's file; FileNotFoundError once expunged."""
        return self._follow(uid, lambda path: os.open(path, os.O_RDONLY))

    def _follow(self, uid: int, use: Callable[[str], T]) -> T:
        """`use` the message's file, wherever it went. A file last seen in new/
        may be where a claim puts it: while a helper claims, that is asked
        first (a name just renamed away costs a locked directory look-up),
        else second; failing both, the folder is listed again."""
        for _ in range(2):
            entry = self.name_of(uid)
            if entry is None:
                break
            places = [os.path.join(self.path, *entry)]
            if entry[0] == "new":
                claimed = os.path.join(self.path, "cur", renamed(entry[1], flags_of(entry[1])))
                places.insert(0 if self._claiming else 1, claimed)
            for place in places:
                try:
                    return use(place)
                except FileNotFoundError:
                    pass
            self._relocate(uid)
        raise FileNotFoundError(errno.ENOENT, f"message {uid} is gone")

    def _relocate(self, uid: int) -> None:
        """Another session or POP3 renamed (or removed) a file: look again."""
        with self._lock:
            self._stamps = None
            self.sync()

    def size(self, uid: int) -> int:
        """RFC822.SIZE: the message's octets with CRLF line endings (the ,W= field)."""
        entry = self.name_of(uid)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, f"message {uid} is gone")
        size = size_field(entry[1].partition(":")[0], ",W=")
        if size is not None:
            return size
        with self._lock:
            cached = self._sizes.get(uid)
        if cached is None:
            cached = pop3_size_of_file(os.path.join(self.path, *entry))
            with self._lock:
                self._sizes[uid] = cached
        return cached

    def internal_date(self, uid: int) -> float:
        """INTERNALDATE: the file's mtime (set by APPEND to the date the client gave)."""
        return self._follow(uid, lambda path: os.stat(path).st_mtime)

    def change_flags(self, uid: int, change: Callable[[int], int]) -> int | None:
        """Apply `change` (old bits -> new bits) to the file's current flags by
        renaming it; the new bits, or None when the message is gone."""
        for _ in range(3):
            with self._lock:
                entry = self._names.get(uid)
            if entry is None:
                return None
            sub, name = entry
            old = flags_of(name)
            new = change(old)
            target = renamed(name, new)
            if sub == "cur" and target == name:
                return new
            try:
                os.rename(os.path.join(self.path, sub, name),
                          os.path.join(self.path, "cur", target))
            except FileNotFoundError:
                self._relocate(uid)
                continue
            with self._lock:                  # the next look updates the snapshot
                base = name.partition(":")[0]
                self._names[uid] = self._listing[base] = ("cur", target)
                (self._seen_cur if sub == "cur" else self._seen_new).discard(name)
                self._seen_cur.add(target)
                self._dirty.add(base)
            return new
        return None

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Unlink the messages' files (EXPUNGE); the UIDs whose file this call removed."""
        removed = []
        for uid in uids:
            for _ in range(2):
                path = self.filename(uid)
                if path is None:
                    break
                try:
                    os.unlink(path)
                    removed.append(uid)
                    break
                except FileNotFoundError:
                    self._relocate(uid)
        if removed:
            self.syncer.sync(os.path.join(self.path, "cur"))
        return removed

    def add(self, files: list[tuple[str, str, bool]]) -> list[int | None]:
        """Put files into cur/ and give them UIDs in this order: (source path, new
        name, move). `move` renames the source (APPEND's temp file, MOVE), else it
        is hard-linked (COPY). A source that vanished gets None."""
        with self._lock, self._flock():
            self._load()
            if self._validity == 0 or self._file_stamp is None:
                self._relist()
                self._rewrite()
            given: list[int | None] = []
            added = []
            for source, name, move in files:
                target = os.path.join(self.path, "cur", name)
                try:
                    (os.rename if move else os.link)(source, target)
                except FileNotFoundError:
                    given.append(None)
                    continue
                base = name.partition(":")[0]
                self._uids[base] = self._next
                self._names[self._next] = self._listing[base] = ("cur", name)
                self._seen_cur.add(name)
                added.append((self._next, base))
                given.append(self._next)
                self._next += 1
            if added:
                self.syncer.sync(os.path.join(self.path, "cur"))
                self._append(added)
            self._snapshot = None                 # built afresh at the next look
            return given


# The helper of a big claim: renames NUL-separated (name, target) pairs from new/ to
# cur/ and names each file it could not move.
_RENAMER = """import os, sys
os.nice(19)                     # housekeeping: the sessions' reading comes first
new = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
cur = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
names = sys.stdin.buffer.read().split(b"\\0")
for name, target in zip(names[0::2], names[1::2]):
    try:
        os.rename(name, target, src_dir_fd=new, dst_dir_fd=cur)
    except OSError:
        sys.stdout.buffer.write(name + b"\\0")
"""
FINE_STILL_NS = 50_000_000     # still this long on a file system with sub-second mtimes
FAST_SYNC_SECONDS = 5.0        # a fast sync trusts a look this recent (Dovecot's interval)
CLAIM_AT_ONCE = 500            # new/ files a SELECT moves to cur/ before it answers; more: later
CLAIM_DEFER_SECONDS = 30.0     # how long those wait at most for their session to rest


def _still(*mtimes: int) -> bool:
    """Have the folders been unchanged long enough that equal mtimes mean no change?
    A file system that keeps sub-second mtimes (ext4, xfs, btrfs, tmpfs) updates
    them every clock tick, a few ms; one with whole seconds (or FAT's two) needs
    STABLE_FOLDER_NS. An mtime with a fraction proves the former."""
    latest = max(mtimes)
    still = FINE_STILL_NS if all(m % 1_000_000_000 for m in mtimes) else STABLE_FOLDER_NS
    return time.time_ns() - latest > still
