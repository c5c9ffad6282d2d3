"""The outbound queue on disk: entries (message + envelope), per-recipient state, ids.

Layout under `<data_dir>/queue/`:

    tmp/            files being written; anything here after a crash was never acknowledged
    entries/ID.msg  the message, LF line endings, exactly as it will be sent
    entries/ID.env  the envelope: JSON with the sender and each recipient's state

Commit point (`commit`): the message is fsync'd and hard-linked as `ID.msg`; the
envelope is written to tmp/, fsync'd and renamed to `ID.env`; `entries/` is
fsync'd. An entry exists exactly when its `.env` does, so a crash before the
last rename leaves an orphan `.msg` that nobody acknowledged (removed by
`clean_orphans`), and a crash after it loses nothing. Envelope updates use
the same write-fsync-rename, so a reader sees the old state or the new one,
never half of each.

Every change to an entry happens under an flock() on its `.msg` file, so the
queue runner and the `queue` command can work on the same queue at once.

An entry that cannot be trusted goes to `bad/` (both files, and an
`event=quarantined` log line) instead of stopping the queue: an envelope that
is not JSON, lacks a field or holds a value of the wrong type for one (every
field is checked against its declared type when it is read), or whose
message file no longer has the size recorded at commit (checked before
delivery: a truncated file must not go out truncated). The size, not a hash,
is what is recorded: it costs one stat, and catches truncation, the way a
crash, a full disk or a partial restore damages a file.

Envelopes written by earlier versions load: before recipients had typed
results (a free-text `last_reply`, expiry marked inside it) they are
upgraded as they are read; without a `size`, the message's size is unknown
and not checked.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import math
import os
import re
import secrets
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum, StrEnum
from functools import cache
from pathlib import Path

from ..core.durable import DirSyncer, replace_durably, temp_name, unlink_quietly, write_synced
from ..log.events import EventLog
from .maildir import TempMessage

WAKE_FILE = "wake"
BAD_DIR = "bad"               # quarantined entries, for the admin to look at
COPY_CHUNK = 1 << 20


_counter = itertools.count(secrets.randbelow(16 ** 5))   # random start: other processes differ


def new_id() -> str:
    """A message/queue id: milliseconds, then a per-process counter, in hex.

    Time-ordered and unique within a process; an id that another process
    happened to pick in the same millisecond is caught at commit (link fails)."""
    return f"{int(time.time() * 1000):011X}{next(_counter) % 16 ** 5:05X}"


QUEUE_ID = re.compile(r"[0-9A-F]{16}\Z")


def check_id(queue_id: str) -> str:
    """A queue id as new_id makes them; anything else (`../x`) is refused."""
    if not QUEUE_ID.match(queue_id):
        raise ValueError(f"not a queue id: {queue_id!r} (16 characters 0-9 A-F)")
    return queue_id


class RecipientState(StrEnum):
    """Where a recipient of a queue entry stands (written to the envelope as its value)."""
    PENDING = "pending"         # to be tried (again) at next_attempt
    DELIVERED = "delivered"
    FAILED = "failed"           # refused for good, or expired: the sender gets a DSN


@dataclass
class Recipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    # The last attempt's result (lib/outbound/results.py reads and writes these):
    reply_code: int | None = None       # the reply's code, or what a failure counts as
    reply_enhanced: str | None = None   # its RFC 3463 status code ("5.1.1"), when known
    reply_text: str = ""                # the reply's text, or what went wrong when no host replied
    failure: str = ""                   # "": a host replied; else why none did (refused, tls ...)
    expired: bool = False       # failed because give_up_after passed, not because it was refused
    original: str = ""          # the address the client gave, when an alias forwarded it
    relay: str = ""             # the host that gave the reply: host[ip]:port
    reported: bool = False      # failed, and the sender has had a DSN about it

    def __post_init__(self) -> None:
        self.state = RecipientState(self.state)     # from JSON: the plain value


@dataclass
class Envelope:
    id: str
    sender: str                 # "" for the null sender <>
    recipients: list[Recipient]
    created: float
    utf8: bool = False          # SMTPUTF8 was used (RFC 6531)
    origin: dict = field(default_factory=dict)   # session, client, for the log and DSNs
    size: int | None = None     # octets of the message file at commit; None: not recorded

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Raises ValueError, naming the field, for anything that is not an
        envelope: bad JSON, a missing field, a value of the wrong type, an
        unknown state. Keys this version does not know are ignored (a newer
        version may add some); an old envelope is upgraded."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except ValueError as error:                 # not UTF-8, or not JSON
            raise ValueError(f"not an envelope: {error}") from None
        values = _checked(cls, raw)
        if not values["recipients"]:
            raise ValueError("bad envelope: recipients is empty")
        values["recipients"] = [
            Recipient(**_checked(Recipient, _upgraded(item), f"recipients[{index}]"))
            for index, item in enumerate(values["recipients"])]
        return cls(**values)

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == RecipientState.PENDING]

    @property
    def next_attempt(self) -> float:
        return min((r.next_attempt for r in self.pending), default=float("inf"))


# The old format: "451 4.2.0 text", and " (gave up after 5d)" appended on expiry.
_OLD_REPLY = re.compile(r"(\d{3})(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: |\Z)")
_OLD_EXPIRY = re.compile(r" \(gave up after [^)]*\)\Z")


def _upgraded(item: object) -> object:
    """A recipient as the current format has it, from one written before the
    last reply had fields (`last_reply` text) or from the current format."""
    if not isinstance(item, dict) or "last_reply" not in item or "reply_code" in item:
        return item
    item = dict(item)
    text = item.pop("last_reply") or ""
    if not isinstance(text, str):
        raise ValueError(f"bad envelope: last_reply is {_shown(text)}, not text")
    if item.get("state") == RecipientState.FAILED and (marker := _OLD_EXPIRY.search(text)):
        item["expired"] = True
        text = text[:marker.start()]
    if match := _OLD_REPLY.match(text):
        item["reply_code"] = int(match.group(1))
        item["reply_enhanced"] = match.group(2)
        text = text[match.end():]
    item["reply_text"] = text
    return item


# ---------------------------------------------------------------- field types

def _checked(cls: type, raw: object, where: str = "") -> dict:
    """The fields of dataclass `cls` found in `raw`, each of its declared type
    (ValueError naming the first that is missing or is not); other keys dropped.
    `where` says which part of the envelope `raw` is, for the error."""
    problem = f"bad envelope: {where}: " if where else "bad envelope: "
    if not isinstance(raw, dict):
        raise ValueError(f"{problem}{_shown(raw)} is not a JSON object")
    values = {}
    for name, (wanted, required) in _field_types(cls).items():
        if name not in raw:
            if required:
                raise ValueError(f"{problem}no {name}")
            continue
        value = raw[name]
        if not _fits(value, wanted):
            raise ValueError(f"{problem}{name} is {_shown(value)}, not {_type_name(wanted)}")
        values[name] = value
    if values.get("attempts", 0) < 0:
        raise ValueError(f"{problem}attempts is {values['attempts']}")
    return values


@cache
def _field_types(cls: type) -> dict[str, tuple[object, bool]]:
    """name -> (declared type, required) of a dataclass, from its annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(cls)}


def _fits(value: object, wanted: object) -> bool:
    """Does a value read from JSON have the declared type? (float: any finite
    number; int: no bool, since JSON's true is not a count; an Enum: one of its values.)"""
    if isinstance(wanted, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(wanted))
    if wanted is type(None):
        return value is None
    kind = typing.get_origin(wanted) or wanted       # list[Recipient] -> list
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(kind, type) and issubclass(kind, Enum):
        return value in {member.value for member in kind}
    return isinstance(kind, type) and isinstance(value, kind)


def _type_name(wanted: object) -> str:
    if isinstance(wanted, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(wanted))
    kind = typing.get_origin(wanted) or wanted
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of " + "/".join(str(member.value) for member in kind)
    names = {type(None): "null", bool: "true/false", int: "a whole number",
             float: "a number", str: "text", list: "a list", dict: "a JSON object"}
    return names.get(kind, str(kind)) if isinstance(kind, type) else str(kind)


def _shown(value: object) -> str:
    """A value for the log line: JSON-like, short."""
    text = json.dumps(value)              # NaN shows as NaN
    return text if len(text) <= 40 else text[:37] + "..."


class QueueBusy(Exception):
    """The entry is being worked on by another thread or process."""


class Spool:
    """The queue under `<data_dir>/queue`."""

    def __init__(self, root: str | os.PathLike, syncer: DirSyncer | None = None):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.entries_dir = self.root / "entries"
        self.syncer = syncer or DirSyncer()
        # Set by a queue runner in this process: told of each new entry at once.
        # Without one (the sendmail command), the wake file tells the daemon.
        self.notify: Callable[[str], None] | None = None
        for directory in (self.root, self.tmp, self.entries_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def message_path(self, queue_id: str) -> Path:
        return self.entries_dir / f"{check_id(queue_id)}.msg"

    def envelope_path(self, queue_id: str) -> Path:
        return self.entries_dir / f"{check_id(queue_id)}.env"

    # ------------------------------------------------------------ enqueue

    def begin(self) -> TempMessage:
        """A new message file in tmp/, to be committed with `commit` or discarded."""
        base = f"{new_id()}.{os.getpid()}"
        return TempMessage(self.tmp / base, base)

    def commit(self, temp: TempMessage, envelope: Envelope, announce: bool = True) -> str:
        """Make `temp` the queue entry `envelope.id`. The commit point; see the module
        doc. With announce=False the runner is told later, by `announce`."""
        try:
            temp.finish()
            temp.close()
            envelope.size = temp.size       # checked before delivery: no truncated sends
            while True:                 # link, unlike rename, never replaces an entry
                try:
                    os.link(temp.path, self.message_path(envelope.id))
                    break
                except FileExistsError:
                    envelope.id = new_id()
            os.unlink(temp.path)
            staged = temp_name(self.tmp, f"{envelope.id}.env")
            write_synced(staged, envelope.to_json())
            os.rename(staged, self.envelope_path(envelope.id))
            self.syncer.sync(self.entries_dir)
        except BaseException:
            temp.discard()
            unlink_quietly(self.message_path(envelope.id))
            unlink_quietly(self.envelope_path(envelope.id))
            raise
        if announce:
            self.announce(envelope.id)
        return envelope.id

    def announce(self, queue_id: str) -> None:
        """Tell the queue runner of a new entry: directly in this process, else
        through the wake file."""
        if self.notify is not None:
            self.notify(queue_id)
        else:
            self.poke()

    def enqueue_copy(self, source: Path, skip: int, envelope: Envelope,
                     announce: bool = True) -> str:
        """Queue a copy of `source` from byte `skip` on (the local copy's Return-Path
        is not part of what goes out)."""
        temp = self.begin()
        try:
            with open(source, "rb") as handle:
                handle.seek(skip)
                while chunk := handle.read(COPY_CHUNK):
                    temp.write(chunk)
        except BaseException:
            temp.discard()
            raise
        return self.commit(temp, envelope, announce)

    def poke(self) -> None:
        """Tell a queue runner (maybe in another process) to look now."""
        path = self.root / WAKE_FILE
        try:
            with open(path, "a"):
                pass
            os.utime(path)
        except OSError:
            pass

    def wake_time(self) -> float:
        try:
            return os.stat(self.root / WAKE_FILE).st_mtime
        except FileNotFoundError:
            return 0.0

    # ------------------------------------------------------------ reading and updating

    def ids(self) -> list[str]:
        return sorted(name[:-4] for name in os.listdir(self.entries_dir) if name.endswith(".env"))

    def load(self, queue_id: str) -> Envelope:
        """The entry's envelope; FileNotFoundError when gone, ValueError when it is
        not a valid envelope of this entry (the caller decides: see `read`)."""
        envelope = Envelope.from_json(self.envelope_path(queue_id).read_bytes())
        if envelope.id != queue_id:
            raise ValueError(f"bad envelope: its id {envelope.id} is not its file's")
        return envelope

    def read(self, queue_id: str) -> Envelope | None:
        """The entry's envelope; None when it is bad, after moving it to bad/.
        FileNotFoundError when gone."""
        try:
            return self.load(queue_id)
        except ValueError as error:
            self.quarantine(queue_id, str(error))
            return None

    def load_for_delivery(self, queue_id: str) -> Envelope | None:
        """`read`, and the message file checked against the size the envelope
        recorded at commit (when it did: older ones did not); a file that
        changed is quarantined (None). Call it holding the entry's lock."""
        envelope = self.read(queue_id)
        if envelope is None or envelope.size is None:
            return envelope
        try:
            actual = os.stat(self.message_path(queue_id)).st_size
        except FileNotFoundError:
            actual = None
        if actual != envelope.size:
            found = "missing" if actual is None else f"{actual} octets"
            self.quarantine(queue_id, f"message file changed: {found}, "
                                      f"queued with {envelope.size} octets")
            return None
        return envelope

    def entries(self) -> list[Envelope]:
        """Every valid entry. One that is not is moved to queue/bad/ (and said so
        on the log) instead of stopping the whole queue."""
        found = []
        for queue_id in self.ids():
            try:
                envelope = self.read(queue_id)
            except FileNotFoundError:
                continue            # delivered or removed while we looked
            if envelope is not None:
                found.append(envelope)
        return found

    def quarantine(self, queue_id: str, reason: str) -> None:
        """Move both files of an entry to bad/ (the envelope first: the entry
        stops existing at once) and log it."""
        bad = self.root / BAD_DIR
        try:
            bad.mkdir(mode=0o700, exist_ok=True)
            for path in (self.envelope_path(queue_id), self.message_path(queue_id)):
                try:
                    os.rename(path, bad / path.name)
                except FileNotFoundError:
                    pass
            self.syncer.sync(self.entries_dir)
        except OSError as error:        # e.g. `queue list` by a user who may only read
            EventLog("queue").error("quarantine_failed", msg=queue_id, reason=reason,
                                    error=error.strerror or str(error))
            return
        EventLog("queue").error("quarantined", msg=queue_id, reason=reason,
                                moved_to=str(bad))

    def quarantined(self) -> list[str]:
        """Ids of the entries in bad/."""
        try:
            names = os.listdir(self.root / BAD_DIR)
        except FileNotFoundError:
            return []
        return sorted({name.rpartition(".")[0] for name in names
                       if name.endswith((".env", ".msg"))})

    def save(self, envelope: Envelope) -> None:
        """Replace the envelope atomically (write, fsync, rename, fsync dir)."""
        replace_durably(self.envelope_path(envelope.id), envelope.to_json(), self.tmp, self.syncer)

    def remove(self, queue_id: str) -> None:
        """Delete an entry: the envelope first, so it stops existing at once."""
        unlink_quietly(self.envelope_path(queue_id))
        unlink_quietly(self.message_path(queue_id))
        self.syncer.sync(self.entries_dir)

    @contextmanager
    def locked(self, queue_id: str, wait: bool = False) -> Iterator[None]:
        """Exclusive use of one entry; raises QueueBusy (or waits, with wait=True),
        FileNotFoundError when the entry is gone."""
        fd = os.open(self.message_path(queue_id), os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise QueueBusy(queue_id) from None
                raise
            if not self.envelope_path(queue_id).exists():
                raise FileNotFoundError(self.envelope_path(queue_id))
            yield
        finally:
            os.close(fd)

    def clean_orphans(self, min_age: float = 3600.0) -> int:
        """Remove what a crash left before a commit point: old files in tmp/ and
        `.msg` files without an envelope. Returns how many files went."""
        removed = 0
        limit = time.time() - min_age
        for entry in os.scandir(self.tmp):
            if _older(entry, limit):
                removed += unlink_quietly(entry.path)
        names = set(os.listdir(self.entries_dir))
        for entry in os.scandir(self.entries_dir):
            stem, dot, kind = entry.name.rpartition(".")
            partner = f"{stem}.env" if kind == "msg" else f"{stem}.msg"
            if kind in ("msg", "env") and partner not in names and _older(entry, limit):
                removed += unlink_quietly(entry.path)
        return removed


def _older(entry: os.DirEntry, limit: float) -> bool:
    try:
        return entry.stat().st_mtime < limit
    except FileNotFoundError:
        return False


