"""Accepting a message: written once as it arrives, then committed to every
Maildir and/or the outbound queue in one step.

The first local mailbox's tmp/ holds the file when there is one (with a
`Return-Path:` line for the local copies); otherwise the queue's tmp/ does
(without it: Return-Path belongs to final delivery, RFC 5321 4.4). A message
for both local and remote recipients is copied into the queue, minus that
line, at commit time. `commit` returns only after every copy is fsync'd.

With SRS (DESIGN 7.2) the recipients an alias forwards leave with another
envelope sender than those the client named itself, and an envelope has one
sender: such a message becomes two queue entries, committed together.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config.router import Resolution
from ..core.addresses import Address, format_local_part
from .maildir import MaildirStore, TempMessage
from .spool import Envelope, Recipient, Spool, new_id

HEAD_SCAN_LIMIT = 256 * 1024          # look no further for the end of the header
REWRITE_IN_PLACE = 1024 * 1024       # a message up to this is rewritten in memory, in place
KEEP_IN_MEMORY = 256 * 1024           # a message up to this is also kept in memory while it comes
JUNK_FOLDER = ".Junk"                 # Maildir++ folder of tagged spam (IMAP's \Junk)
_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Destinations:
    """Where one message goes: local mailboxes, and remote (address, original) pairs;
    `original` is the local address that forwarded it, "" for one the client named."""
    mailboxes: tuple[str, ...]
    remote: tuple[tuple[str, str], ...]

    @property
    def forwarded(self) -> tuple[tuple[str, str], ...]:
        """The remote recipients a local alias forwards to."""
        return tuple(pair for pair in self.remote if pair[1])

    @property
    def direct(self) -> tuple[tuple[str, str], ...]:
        """The remote recipients the client named itself."""
        return tuple(pair for pair in self.remote if not pair[1])

    @classmethod
    def of(cls, resolutions: list[Resolution]) -> Destinations:
        mailboxes: dict[str, None] = {}
        remote: dict[str, str] = {}
        for resolution in resolutions:
            mailboxes.update(dict.fromkeys(resolution.mailboxes))
            for target in resolution.forward:
                original = "" if target == resolution.address else str(resolution.address)
                remote.setdefault(str(target), original)
        return cls(tuple(mailboxes), tuple(remote.items()))


@dataclass
class Accepted:
    id: str
    mailboxes: dict[str, str] = field(default_factory=dict)   # mailbox -> file name
    queue_id: str | None = None         # the first queue entry, when there is one
    queue_ids: tuple[str, ...] = ()      # every entry: two when SRS splits the recipients
    junk: bool = False                  # the local copies went to the Junk folders


def path_text(address: Address | None) -> str:
    return f"<{address}>" if address is not None else "<>"


def envelope_sender(address: Address | None) -> str:
    return "" if address is None else f"{format_local_part(address.local)}@{address.domain}"


class Incoming:
    """One message being received. Feed it stored-form bytes (LF, no CR)."""

    def __init__(self, intake: Intake, msg_id: str, sender: Address | None,
                 destinations: Destinations, header: bytes, utf8: bool, origin: dict):
        self.id = msg_id
        self._intake = intake
        self.sender = sender
        self.destinations = destinations
        self.utf8 = utf8
        self.origin = origin
        self._return_path = b""
        if destinations.mailboxes:
            self._return_path = f"Return-Path: {path_text(sender)}\n".encode()
        self._header = header
        self._temp: TempMessage = self._new_temp()
        self._temp.write(self._return_path)
        self._temp.write(header)
        self._head = bytearray()
        self._head_done = False
        # The client's bytes of a small message, kept so that screening can read
        # and rewrite it without a syscall; None once the message outgrows it.
        self._kept: bytearray | None = bytearray()
        self.hops = header.count(b"Received:")
        # SRS: the envelope sender of the forwarded recipients' entry (None: the sender)
        self.forward_sender: str | None = None

    def _new_temp(self) -> TempMessage:
        if self.destinations.mailboxes:
            return self._intake.store.begin(self.destinations.mailboxes[0])
        return self._intake.spool.begin()

    @property
    def _prefix(self) -> int:
        """Octets of our own lines (Return-Path, Received) before the client's."""
        return len(self._return_path) + len(self._header)

    @property
    def path(self) -> Path:
        """The file, which may not hold everything yet (see readable_path)."""
        return Path(self._temp.path)

    def content(self, limit: int = -1) -> bytes:
        """The message as the client sent it (LF line endings), without our lines:
        what a DKIM verifier must see (or signer sign); its first `limit` octets."""
        if self._kept is not None:
            return bytes(self._kept if limit < 0 else self._kept[:limit])
        self._temp.flush()
        with open(self._temp.path, "rb") as file:
            file.seek(self._prefix)
            return file.read(limit)

    def rewrite(self, added: bytes, header: Callable[[bytes], bytes]) -> None:
        """Put `added` (header fields, LF endings) above our Received: line and pass
        the client's header through `header` (to drop what a stranger may not
        claim): the screening's verdict, before the commit. The message is
        written again as a new file, the body copied by the kernel."""
        old = self._temp
        if old.size <= REWRITE_IN_PLACE:            # no syscall while all of it is buffered
            whole = self.content()
            end = 0 if whole.startswith(b"\n") else whole.find(b"\n\n") + 1
            end = end if end > 0 or whole.startswith(b"\n") else len(whole)
            old.replace_contents(self._return_path + added + self._header + header(whole[:end])
                                 + whole[end:])
            return
        old.flush()
        source = os.open(old.path, os.O_RDONLY)
        try:
            start = self._prefix
            window = os.pread(source, HEAD_SCAN_LIMIT, start)
            end = 0 if window.startswith(b"\n") else window.find(b"\n\n") + 1
            if end <= 0 and start + len(window) < old.size:
                end = 0                              # no header end in sight: left as it is
            elif end <= 0:
                end = len(window)                    # a message that is all header
            own_header = window[:end]
            new = self._new_temp()
            try:
                for part in (self._return_path, added, self._header, header(own_header)):
                    new.write(part)
                skipped = self._return_path + self._header + own_header
                new.copy_from(source, start + end, old.size - start - end,
                              old.lines - skipped.count(b"\n"))
            except BaseException:
                new.discard()
                raise
        finally:
            os.close(source)
        old.discard()
        self._temp = new

    def readable_path(self) -> Path:
        """The file as written so far, complete on disk (for the content filter)."""
        self._temp.flush()
        return Path(self._temp.path)

    def write(self, data: bytes, lines: int | None = None) -> None:
        if not self._head_done:
            self._scan_head(data)
        if self._kept is not None:
            if len(self._kept) + len(data) <= KEEP_IN_MEMORY:
                self._kept += data
            else:
                self._kept = None
        self._temp.write(data, lines)

    def _scan_head(self, data: bytes) -> None:
        """Count the message's own Received: lines, for loop detection."""
        self._head += data
        if self._head.startswith(b"\n"):
            end = 0
        else:
            end = self._head.find(b"\n\n")
        if end >= 0 or len(self._head) > HEAD_SCAN_LIMIT:
            head = bytes(self._head[:end] if end >= 0 else self._head)
            self.hops += len(_RECEIVED.findall(head))
            self._head_done = True
            self._head = bytearray()

    def _envelopes(self) -> list[Envelope]:
        """One queue entry, or two when the forwarded recipients get their own sender."""
        sender = envelope_sender(self.sender)
        groups = [(sender, self.destinations.remote)]
        forwarded = self.destinations.forwarded
        if self.forward_sender is not None and forwarded:
            groups = [(sender, self.destinations.direct), (self.forward_sender, forwarded)]
        groups = [group for group in groups if group[1]]
        now = time.time()
        return [Envelope(id=self.id if n == 0 else new_id(), sender=group_sender,
                         created=now, utf8=self.utf8, origin=self.origin,
                         recipients=[Recipient(address=a, original=o) for a, o in remote])
                for n, (group_sender, remote) in enumerate(groups)]

    def commit(self, junk: bool = False) -> Accepted:
        """The commit point: fsync'd into every Maildir and the queue, or an exception.
        `junk`: the local copies go to each mailbox's Junk folder (Maildir++ .Junk).
        Queue entries are announced only once everything is on disk, so a failure
        can take them back (all or nothing: the client retries)."""
        if not self._head_done:
            self._scan_head(b"\n\n")
        accepted = Accepted(self.id)
        intake = self._intake
        envelopes = self._envelopes()
        queued: list[str] = []
        try:
            for n, envelope in enumerate(envelopes):
                if n == len(envelopes) - 1 and not self.destinations.mailboxes:
                    queued.append(intake.spool.commit(self._temp, envelope, announce=False))
                else:
                    self._temp.finish()
                    queued.append(intake.spool.enqueue_copy(
                        Path(self._temp.path), len(self._return_path), envelope,
                        announce=False))
            if self.destinations.mailboxes:
                targets = [f"{m}/{JUNK_FOLDER}" if junk else m
                           for m in self.destinations.mailboxes]
                committed = intake.store.commit(self._temp, targets)
                accepted.mailboxes = {target.partition("/")[0]: name
                                      for target, name in committed.items()}
                accepted.junk = junk
        except BaseException:
            for queue_id in queued:
                with intake.spool.locked(queue_id, wait=True):
                    intake.spool.remove(queue_id)
            raise
        for queue_id in queued:
            intake.spool.announce(queue_id)
        accepted.queue_ids = tuple(queued)
        accepted.queue_id = queued[0] if queued else None
        return accepted

    def discard(self) -> None:
        self._temp.discard()


class Intake:
    """Creates `Incoming` messages over one Maildir store and one queue."""

    def __init__(self, store: MaildirStore, spool: Spool):
        self.store = store
        self.spool = spool

    def begin(self, msg_id: str, sender: Address | None, destinations: Destinations,
              header: bytes = b"", utf8: bool = False, origin: dict | None = None) -> Incoming:
        return Incoming(self, msg_id, sender, destinations, header, utf8, origin or {})
