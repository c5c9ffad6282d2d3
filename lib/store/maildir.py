"""Maildir storage: durable delivery to one or more mailboxes; snapshots, reading,
flagging, deleting and locking for POP3.

Layout: `<mail_root>/<mailbox>/{tmp,new,cur}`, created on demand, mode 0700.
Messages are stored with LF line endings and no CR at all; the name carries
the file size and the size with CRLF line endings, as Dovecot does:
`<sec>.M<usec>P<pid>Q<n>.<host>,S=<octets>,W=<crlf octets>`, so POP3 can answer
STAT and LIST from a directory listing without opening a file.

Commit point (`commit`): the message is written to `tmp/` and fsync'd; then
hard-linked into `new/` of every target mailbox; then each `new/` is fsync'd.
Only when `commit` returns is the message acknowledged. A crash before that
leaves at most a stray file in `tmp/` (removed after 36 hours, as the Maildir
convention says) and links that the client's retry may duplicate; a crash
after it loses nothing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..core import wire
from ..core.durable import DirSyncer, write_all

STALE_TEMP_AGE = 36 * 3600     # the Maildir convention's limit for files in tmp/
MAX_UID_LENGTH = 70            # RFC 1939 7: a unique-id is 1 to 70 characters
READ_CHUNK = 1 << 20
WRITE_BUFFER = 64 * 1024       # small writes are gathered up to this before write()
STABLE_FOLDER_NS = 2_000_000_000   # a folder listing is cached once unchanged this long
LOCK_FILE = ".pop3.lock"
SEEN_FLAG = "S"

_sequence = itertools.count(1)     # per process; next() on it is atomic in CPython


class MailboxBusy(Exception):
    """Another POP3 session holds the mailbox (answered with -ERR [IN-USE])."""


def _safe_host(hostname: str) -> str:
    # The Maildir convention escapes '/' and ':'; ',' separates our size fields.
    return hostname.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


class TempMessage:
    """A message being written to a Maildir's tmp/. Feed it LF-only bytes."""

    def __init__(self, path: str | os.PathLike, base: str):
        self.path: str = os.fspath(path)
        self.base = base            # the unique part of the final name
        self.size = 0               # octets in the file
        self.lines = 0              # LF characters, so the CRLF size is size + lines
        self._last = b"\n"
        self._synced = False
        self._pending = bytearray()     # small writes gathered into one write()
        self.moved = False              # renamed into place: nothing left to remove
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes, lines: int | None = None) -> None:
        """Append LF-only bytes; `lines` is their LF count when the caller knows it."""
        if not data:
            return
        self.size += len(data)
        self.lines += data.count(b"\n") if lines is None else lines
        self._last = data[-1:]
        self._synced = False
        if self._pending or len(data) < WRITE_BUFFER:
            self._pending += data
            if len(self._pending) >= WRITE_BUFFER:
                self.flush()
        else:
            write_all(self._fd, data)

    def replace_contents(self, data: bytes) -> None:
        """Make the file exactly `data` (LF-only), in place: the same inode, so no
        directory entry is made or removed (a small message rewritten after
        screening). When nothing has reached the file yet, no syscall at all."""
        if self.size == len(self._pending):          # all of it still in our buffer
            self._pending = bytearray(data)
        else:
            self._pending = bytearray()
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            write_all(self._fd, data)
        self.size = len(data)
        self.lines = data.count(b"\n")
        self._last = data[-1:] or b"\n"
        self._synced = False

    def copy_from(self, source: int, offset: int, count: int, lines: int) -> None:
        """Append `count` octets of file `source` from `offset` (holding `lines`
        LFs), copied inside the kernel where it can (copy_file_range)."""
        if count <= 0:
            return
        self.flush()
        left, position = count, offset
        while left > 0:
            try:
                done = os.copy_file_range(source, self._fd, left, position)
            except OSError:                     # another file system, or no support
                chunk = os.pread(source, min(left, READ_CHUNK), position)
                done = len(chunk)
                if done:
                    write_all(self._fd, chunk)
            if done <= 0:
                raise OSError(errno.EIO, "the message file ended early")
            left -= done
            position += done
        self.size += count
        self.lines += lines
        self._last = os.pread(source, 1, offset + count - 1)
        self._synced = False

    def flush(self) -> None:
        """Hand buffered bytes to the file (so another program can read them)."""
        if self._pending:
            write_all(self._fd, self._pending)
            self._pending = bytearray()

    def finish(self) -> None:
        """End with a newline (POP3 must end every message with CRLF) and fsync."""
        if self._last != b"\n":
            self.write(b"\n")
        self.flush()
        if not self._synced:
            os.fsync(self._fd)
            self._synced = True

    @property
    def crlf_size(self) -> int:
        return self.size + self.lines

    def final_name(self) -> str:
        return f"{self.base},S={self.size},W={self.crlf_size}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close, and remove the file unless a commit has moved it away."""
        self.close()
        if self.moved:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class StoredMessage(NamedTuple):
    """One message in a POP3 snapshot (a tuple: 10,000 of them are made quickly)."""
    uid: str          # stable across sessions: from the Maildir unique name
    folder: str       # new/ or cur/ of its Maildir, at snapshot time
    name: str         # its file name then
    size: int         # octets as POP3 sends it: CRLF endings, before byte-stuffing
    crlf: bool        # False: our own LF-only file; True: a foreign file (CRLF or mixed)
    octets: int | None = None   # the file's own size, when its name says (,S=)

    @property
    def path(self) -> Path:
        return Path(self.folder, self.name)

    @property
    def filename(self) -> str:
        return os.path.join(self.folder, self.name)


_SUBFOLDER = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]{0,100}\Z")   # Maildir++: .Junk, .A.B
MAX_CREATE_ATTEMPTS = 5     # a unique name taken, or a tmp/ removed under us: try again


class MaildirStore:
    """All the Maildirs under one root (`<data_dir>/mail`)."""

    def __init__(self, root: str | os.PathLike, hostname: str | None = None,
                 syncer: DirSyncer | None = None):
        self.root = Path(root)
        self.host = _safe_host(hostname or socket.gethostname())
        self.syncer = syncer or DirSyncer()
        self._known: set[str] = set()      # Maildirs seen to exist: no stat per message
        self._listings: dict[str, tuple[int, list]] = {}   # folder -> (mtime_ns, listing)
        self._snapshots: dict[str, tuple[tuple, list]] = {}  # maildir -> (mtimes, messages)
        self._cache_lock = threading.Lock()
        self._pid = os.getpid()

    # ------------------------------------------------------------ layout

    def path(self, mailbox: str) -> Path:
        """A mailbox's Maildir; `name/.Folder` is its Maildir++ subfolder (e.g.
        `alice/.Junk`, where the screening puts a stranger's spam)."""
        name, slash, folder = mailbox.partition("/")
        if not name or name in (".", "..") or "\0" in mailbox or \
                (slash and not _SUBFOLDER.match(folder)):
            raise ValueError(f"unsafe mailbox name {mailbox!r}")
        return self.root / name / folder if slash else self.root / name

    def ensure(self, mailbox: str) -> Path:
        """Create the Maildir (0700), or whichever of tmp/, new/ and cur/ is
        missing, as Dovecot and Postfix's virtual do; return its path. A mailbox
        whose Maildir was deleted is then simply empty."""
        base = self.path(mailbox)
        if mailbox in self._known:
            return base
        if not all(os.path.isdir(base / sub) for sub in ("tmp", "new", "cur")):
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)   # no listing of names
            for sub in ("", "tmp", "new", "cur"):
                (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
                self.syncer.forget(base / sub)
            if "/" in mailbox:                      # Maildir++ marks its subfolders so
                (base / "maildirfolder").touch(mode=0o600)   # (Courier, Dovecot)
            self.syncer.sync(base)
            self.syncer.sync(base.parent)
        self._known.add(mailbox)
        return base

    def _dir(self, mailbox: str, sub: str) -> str:
        """`<root>/<mailbox>/<sub>` as a string, the Maildir created if need be."""
        return os.path.join(self.ensure(mailbox), sub)

    def unique_base(self) -> str:
        """A fresh unique part for a message file name (IMAP's APPEND, COPY, MOVE)."""
        return self._unique_base()

    def _unique_base(self) -> str:
        now = time.time()
        seconds = int(now)
        return (f"{seconds}.M{int((now - seconds) * 1_000_000):06d}P{self._pid}"
                f"Q{next(_sequence)}.{self.host}")

    # ------------------------------------------------------------ delivery

    def begin(self, mailbox: str) -> TempMessage:
        """A new message file in `mailbox`'s tmp/, to be committed or discarded."""
        for _ in range(MAX_CREATE_ATTEMPTS):
            base = self._unique_base()
            try:
                return TempMessage(os.path.join(self._dir(mailbox, "tmp"), base), base)
            except FileExistsError:
                continue
            except FileNotFoundError:           # the Maildir, or its tmp/, was removed
                self._known.discard(mailbox)    # ensure() makes it again
        raise OSError(errno.EIO, f"cannot create a file in {self.path(mailbox)}/tmp")

    def commit(self, temp: TempMessage, mailboxes: Iterable[str]) -> dict[str, str]:
        """Make `temp` a message in every mailbox; return {mailbox: file name}.

        This is the commit point: when it returns, the message is on disk in
        every `new/`. On error nothing is acknowledged and the temp file is gone.
        """
        targets = list(dict.fromkeys(mailboxes))
        try:
            temp.finish()
            temp.close()
            name = temp.final_name()
            created: dict[str, str] = {}
            try:
                for number, mailbox in enumerate(targets):
                    last = number == len(targets) - 1   # the last copy takes the file itself
                    try:
                        _publish(temp.path, os.path.join(self._dir(mailbox, "new"), name), last)
                    except FileNotFoundError:       # the Maildir was removed under us
                        self._known.discard(mailbox)
                        _publish(temp.path, os.path.join(self._dir(mailbox, "new"), name), last)
                    temp.moved = last
                    created[mailbox] = name
                for mailbox in targets:
                    self.syncer.sync(self._dir(mailbox, "new"))
            except BaseException:
                # All or nothing: the client hears 4xx and sends again, so no
                # mailbox may keep a copy of this attempt.
                self._take_back(created)
                raise
        finally:
            temp.discard()
        return created

    def _take_back(self, created: dict[str, str]) -> None:
        for mailbox, name in created.items():
            try:
                os.unlink(os.path.join(self.path(mailbox), "new", name))
            except FileNotFoundError:
                pass
            except OSError:
                continue                 # cannot undo: the retry may duplicate, never lose
            self.syncer.sync(self.path(mailbox) / "new")

    def deliver(self, mailboxes: Iterable[str], data: bytes | Iterable[bytes]) -> dict[str, str]:
        """Deliver a whole message (any line endings) to `mailboxes`, durably."""
        targets = list(dict.fromkeys(mailboxes))
        if not targets:
            return {}
        temp = self.begin(targets[0])
        try:
            converter = wire.LfConverter()
            for chunk in ([data] if isinstance(data, bytes) else data):
                temp.write(converter.feed(chunk))
            temp.write(converter.flush())
        except BaseException:
            temp.discard()
            raise
        return self.commit(temp, targets)

    def clean_stale_temps(self, max_age: float = STALE_TEMP_AGE) -> int:
        """Remove tmp/ files older than `max_age` (never acknowledged); return the count."""
        removed = 0
        limit = time.time() - max_age
        if not self.root.is_dir():
            return 0
        for mailbox in os.scandir(self.root):
            tmp = Path(mailbox.path) / "tmp"
            if not tmp.is_dir():
                continue
            for entry in os.scandir(tmp):
                try:
                    if entry.is_file() and entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ------------------------------------------------------------ POP3 side

    def snapshot(self, mailbox: str) -> list[StoredMessage]:
        """Every message in new/ and cur/, oldest first, with POP3 sizes and UIDs.

        Sizes come from the `,W=` field of our own names; only files that
        another program wrote are read to count their octets. Listings are
        kept in memory with the folders' mtimes and used again while the
        folders have not changed: a login to a 10,000-message mailbox that
        nobody touched costs two stat() calls, not a listing.
        """
        base = str(self.ensure(mailbox))
        folders = (os.path.join(base, "new"), os.path.join(base, "cur"))
        try:
            stamps = tuple(os.stat(folder).st_mtime_ns for folder in folders)
        except FileNotFoundError:               # removed since we last looked: make it again
            self._known.discard(mailbox)
            base = str(self.ensure(mailbox))
            stamps = tuple(os.stat(folder).st_mtime_ns for folder in folders)
        with self._cache_lock:
            cached = self._snapshots.get(base)
        if cached is not None and cached[0] == stamps:
            return list(cached[1])
        entries = self._folder(folders[0], stamps[0]) + self._folder(folders[1], stamps[1])
        entries.sort()                         # two sorted runs: a linear merge
        messages = [message for _, message in entries]
        if len({message.uid for message in messages}) != len(messages):
            messages = _distinct_uids(messages)
        if self._stable(stamps):
            with self._cache_lock:
                self._snapshots[base] = (stamps, messages)
        return list(messages)

    @staticmethod
    def _stable(stamps: tuple[int, ...]) -> bool:
        """Only folders left alone for a while are cached: mtimes are coarse (a
        few ms), so a change in the same tick as our stat() could go unseen."""
        return time.time_ns() - max(stamps) > STABLE_FOLDER_NS

    def warm(self, mailboxes: Iterable[str]) -> None:
        """List every mailbox once (at start), so even first logins find it ready."""
        for mailbox in mailboxes:
            try:
                self.snapshot(mailbox)
            except OSError:
                pass

    def _folder(self, folder: str, stamp: int) -> list[tuple[tuple, StoredMessage]]:
        """(sort key, message) for every file in one new/ or cur/, cached by mtime."""
        with self._cache_lock:
            cached = self._listings.get(folder)
        if cached is not None and cached[0] == stamp:
            return list(cached[1])
        listing = []
        for name in os.listdir(folder):
            if name[:1] == ".":
                continue
            message = _stored(folder, name)
            if message is not None:
                listing.append((_sort_key(folder, name), message))
        listing.sort()
        if self._stable((stamp,)):
            with self._cache_lock:
                self._listings[folder] = (stamp, listing)
        return list(listing)

    def _open_fd(self, message: StoredMessage) -> int:
        """An fd of the message's file; follows it if it moved from new/ to cur/."""
        try:
            return os.open(message.filename, os.O_RDONLY)
        except FileNotFoundError:
            moved = self._find(message)
            if moved is None:
                raise
            return os.open(moved, os.O_RDONLY)

    def open(self, message: StoredMessage) -> BinaryIO:
        """The message's file for reading (unbuffered: it is read in big chunks)."""
        return open(self._open_fd(message), "rb", buffering=0)

    def read_whole(self, message: StoredMessage) -> bytes:
        """A message whose size the name gives, in one read: open, read, close,
        and nothing else (every syscall is a moment another thread takes the GIL)."""
        fd = self._open_fd(message)
        try:
            octets = message.octets or 0
            data = os.read(fd, octets)
            while len(data) < octets:                     # a short read: rare, but legal
                more = os.read(fd, octets - len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            os.close(fd)

    def _find(self, message: StoredMessage) -> str | None:
        """Where the message is now (another session may have moved it)."""
        unique = message.name.split(":", 1)[0]
        maildir = os.path.dirname(message.folder)
        for sub in ("cur", "new"):
            for entry in os.scandir(os.path.join(maildir, sub)):
                if entry.name.split(":", 1)[0] == unique:
                    return entry.path
        return None

    def _current(self, message: StoredMessage) -> str | None:
        path = message.filename
        return path if os.path.exists(path) else self._find(message)

    def mark_seen(self, message: StoredMessage) -> None:
        """Move to cur/ with the Seen flag, so an IMAP server later shows it as read."""
        path = self._current(message)
        if path is None:
            return
        folder, name = os.path.split(path)
        unique, _, info = name.partition(":")
        flags = info[2:] if info.startswith("2,") else ""
        if os.path.basename(folder) == "cur" and SEEN_FLAG in flags:
            return
        flags = "".join(sorted(set(flags) | {SEEN_FLAG}))
        target = os.path.join(os.path.dirname(folder), "cur", f"{unique}:2,{flags}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            pass

    def delete(self, message: StoredMessage) -> None:
        path = self._current(message)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def sync(self, mailbox: str) -> None:
        """Make renames and deletions in `mailbox` durable."""
        base = self.path(mailbox)
        for sub in ("new", "cur"):
            self.syncer.sync(base / sub)

    def lock(self, mailbox: str) -> MailboxLock:
        """Exclusive POP3 access to `mailbox`; raise MailboxBusy when held.

        flock() locks belong to an open file: the kernel drops them when the
        holder closes it or its process dies, so a crash never leaves a stale lock.
        """
        path = self.ensure(mailbox) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:               # the Maildir was removed: make it again
            self._known.discard(mailbox)
            fd = os.open(self.ensure(mailbox) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MailboxBusy(mailbox) from None
            raise
        return MailboxLock(fd)


class MailboxLock:
    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)      # closing drops the flock
            self._fd = -1

    def __enter__(self) -> MailboxLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _publish(source: str, target: str, move: bool) -> None:
    """Hard-link (or, for the last copy, rename) a written message into a new/."""
    try:
        (os.rename if move else os.link)(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        # Another file system: copy the bytes, fsync them, then publish by rename.
        new_dir, name = os.path.split(target)
        staging = os.path.join(os.path.dirname(new_dir), "tmp", name)
        with open(source, "rb") as src, open(staging, "xb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(staging, target)
        if move:
            os.unlink(source)


_DELIVERY_NAME = re.compile(r"(\d+)\.M(\d+)P(\d+)(?:Q(\d+))?")


def delivery_order(folder: str, name: str) -> tuple:
    """The sort key that puts message files in delivery order (IMAP assigns UIDs in it)."""
    return _sort_key(folder, name)


def size_field(unique: str, field: str) -> int | None:
    """A size field (",W=" or ",S=") of a file name's unique part; None when absent."""
    return _size_field(unique, field)


def _sort_key(folder: str, name: str) -> tuple:
    """Delivery order: seconds, then microseconds and the per-process counter
    as numbers (M99999 comes before M100000), then the name."""
    match = _DELIVERY_NAME.match(name)
    if match:
        seconds, micros, pid, sequence = match.groups()
        return int(seconds), int(micros), int(sequence or 0), int(pid), name
    head = name.split(".", 1)[0]
    if wire.is_number(head):
        return int(head), 0, 0, 0, name
    try:
        return int(os.stat(os.path.join(folder, name)).st_mtime), 0, 0, 0, name
    except FileNotFoundError:
        return 0, 0, 0, 0, name


def _stored(folder: str, name: str) -> StoredMessage | None:
    """The snapshot entry for one file; None if it vanished while we looked."""
    unique = name.split(":", 1)[0]
    size = _size_field(unique, ",W=")
    if size is not None:
        return StoredMessage(_uid(unique), folder, name, size, False,
                             _size_field(unique, ",S="))
    try:
        size = pop3_size_of_file(os.path.join(folder, name))
    except FileNotFoundError:
        return None
    return StoredMessage(_uid(unique), folder, name, size, True)


def _distinct_uids(messages: list[StoredMessage]) -> list[StoredMessage]:
    """Two files whose names share a unique part: the later ones get hashed UIDs."""
    seen: set[str] = set()
    result = []
    for message in messages:
        if message.uid in seen:
            message = message._replace(uid=_hashed_uid(message.name.split(":", 1)[0]))
        seen.add(message.uid)
        result.append(message)
    return result


def _size_field(unique: str, field: str) -> int | None:
    """A size field of a Maildir name (",W=" CRLF size, ",S=" file size); None
    when the name has none (another program's file)."""
    at = unique.find(field)
    if at < 0:
        return None
    end = unique.find(",", at + 3)
    digits = unique[at + 3:] if end < 0 else unique[at + 3:end]
    return int(digits) if wire.is_number(digits) else None


def _uid(unique: str) -> str:
    """The unique part before the first ',' (sizes may be appended), when it is a
    valid RFC 1939 unique-id: 1-70 printable ASCII characters without spaces."""
    uid = unique.split(",", 1)[0]
    if 0 < len(uid) <= MAX_UID_LENGTH and uid.isascii() and uid.isprintable() and " " not in uid:
        return uid
    return _hashed_uid(unique)


def _hashed_uid(unique: str) -> str:
    return "h" + hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


def pop3_size_of_file(path: str | os.PathLike) -> int:
    """Octets POP3 sends for a file with any line endings (CRLF, final CRLF added)."""
    counter = wire.CrlfCounter()
    with open(path, "rb") as source:
        while chunk := source.read(READ_CHUNK):
            counter.feed(chunk)
    return counter.total()
