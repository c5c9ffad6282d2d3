"""IMAP commands on folders (RFC 9051 6.3, 6.4.1-6.4.2): SELECT, EXAMINE,
CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (with LIST-EXTENDED,
LIST-STATUS, SPECIAL-USE, CHILDREN), LSUB, STATUS, APPEND, CLOSE, UNSELECT."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from ..core import replies as r
from ..core.errors import Reject
from ..core.replies import ImapData, ImapReply
from ..session.engine import Step
from ..store.folderindex import DELETED, FLAG_LETTERS, SEEN, FolderIndex, renamed
from ..store.folders import DELIMITER, INBOX, SPECIAL_USE, FolderMissing, parents
from . import render
from .framing import MessageSink
from .parser import AppendArgs, Command, ListArgs
from .selected import Selected

if TYPE_CHECKING:
    from .session import ImapSession

SYSTEM_FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
FLAG_BITS = {"\\DRAFT": FLAG_LETTERS["D"], "\\FLAGGED": FLAG_LETTERS["F"],
             "\\ANSWERED": FLAG_LETTERS["R"], "\\SEEN": FLAG_LETTERS["S"],
             "\\DELETED": FLAG_LETTERS["T"]}


def flag_mask(flags: tuple[str, ...]) -> int:
    """The system flags among `flags`; keywords are not kept (see store/folders)."""
    mask = 0
    for flag in flags:
        mask |= FLAG_BITS.get(flag.upper(), 0)
    return mask


# ---------------------------------------------------------------- selecting

def select(session: ImapSession, command: Command) -> Step:
    from .session import State
    name = session.folder_name(str(command.args))
    read_only = command.name == "EXAMINE"
    out: list[ImapData | ImapReply] = [r.IMAP_CLOSED] if session.selected else []
    session.selected, session.state = None, State.AUTHENTICATED   # even if this one fails
    index = session._account().index(name)
    view = Selected(name, index, read_only, rev2=session.utf8)
    session.selected, session.state = view, State.SELECTED
    out += [ImapData(f"FLAGS ({SYSTEM_FLAGS})".encode()),
            r.IMAP_PERMANENT_FLAGS.fill(flags="" if read_only else SYSTEM_FLAGS),
            ImapData(b"%d EXISTS" % view.count)]
    if not session.utf8:                   # IMAP4rev1 only: RFC 9051 dropped these
        out.append(ImapData(b"%d RECENT" % len(view.recent)))
        unseen = view.first_unseen()
        if unseen is not None:
            out.append(r.IMAP_UNSEEN.fill(number=unseen))
    out += [r.IMAP_UIDVALIDITY.fill(validity=view.validity),
            r.IMAP_UIDNEXT.fill(uid=view.uidnext)]
    if session.utf8:                       # RFC 9051 6.3.2: the folder's LIST response
        listing = _Listing(session, extended=True)
        out.append(listing.line(name))
    session.log.debug("select", folder=name, messages=view.count, read_only=read_only)
    done = r.IMAP_EXAMINED if read_only else r.IMAP_SELECTED
    return Step([*out, done.tagged(command.tag)])


def close(session: ImapSession, command: Command) -> Step:
    """CLOSE: remove \\Deleted messages silently (unless read-only), then unselect."""
    from .session import State
    view = session.selected
    if view is not None and not view.read_only:
        view.refresh(allow_expunge=False)
        doomed = [uid for uid, mask in zip(view.uids, view.flags, strict=True)
                  if mask & DELETED and uid not in view.vanished]
        removed = view.index.remove(doomed)
        if removed:
            session.log.info("expunge", user=session.user, folder=view.name, count=len(removed))
    session.selected, session.state = None, State.AUTHENTICATED
    return session.done(command)


def unselect(session: ImapSession, command: Command) -> Step:
    from .session import State
    session.selected, session.state = None, State.AUTHENTICATED
    return session.done(command)


# ---------------------------------------------------------------- changing folders

def create(session: ImapSession, command: Command) -> Step:
    name = session.folder_name(str(command.args))
    if name.endswith(DELIMITER):           # "A." asks for a folder that will hold others
        name = name[:-1]
    session._account().create(name)
    session.log.info("folder_created", user=session.user, folder=name)
    return session.done(command)


def delete(session: ImapSession, command: Command) -> Step:
    name = session.folder_name(str(command.args))
    if session.selected is not None and session.selected.name == name:
        raise Reject(r.IMAP_SELECTED_FOLDER)
    session._account().delete(name)
    session.log.info("folder_deleted", user=session.user, folder=name)
    return session.done(command)


def rename(session: ImapSession, command: Command) -> Step:
    old, new = (session.folder_name(name) for name in command.args)
    view = session.selected
    if view is not None and old != INBOX and \
            (view.name == old or view.name.startswith(old + DELIMITER)):
        raise Reject(r.IMAP_SELECTED_FOLDER)
    session._account().rename(old, new)
    session.log.info("folder_renamed", user=session.user, folder=old, to=new)
    return session.done(command)


def subscribe(session: ImapSession, command: Command) -> Step:
    session._account().subscribe(session.folder_name(str(command.args)))
    return session.done(command)


def unsubscribe(session: ImapSession, command: Command) -> Step:
    session._account().unsubscribe(session.folder_name(str(command.args)))
    return session.done(command)


# ---------------------------------------------------------------- LIST, LSUB, STATUS

class _Listing:
    """Folder names as LIST shows them, with their attributes (RFC 5258, 6154)."""

    def __init__(self, session: ImapSession, extended: bool, show_subscribed: bool = False):
        account = session._account()
        self.session = session
        self.utf8 = session.utf8
        self.existing = set(account.names())
        self.subscribed = set(account.subscriptions())
        self.every = set(self.existing)
        for name in self.existing:
            self.every.update(parents(name))
        self.extended = extended or session.utf8
        self.show_subscribed = show_subscribed

    def attributes(self, name: str) -> list[str]:
        attrs = []
        if name not in self.existing:
            attrs.append("\\NonExistent" if self.extended else "\\Noselect")
        prefix = name + DELIMITER
        has_children = any(other.startswith(prefix) for other in self.every)
        attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if self.show_subscribed and name in self.subscribed:
            attrs.append("\\Subscribed")
        special = SPECIAL_USE.get(name)
        if special:
            attrs.append(special)
        return attrs

    def line(self, name: str, verb: bytes = b"LIST") -> ImapData:
        attrs = " ".join(self.attributes(name)).encode()
        return ImapData(verb + b" (" + attrs + b') "." ' + render.mailbox(name, self.utf8))


def _pattern(text: str) -> re.Pattern[str]:
    """A LIST pattern: * matches anything, % anything but the delimiter."""
    out = []
    for char in text:
        out.append(".*" if char == "*" else "[^.]*" if char == "%" else re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _matches(patterns: list[re.Pattern[str]], name: str) -> bool:
    candidates = (name, INBOX.lower(), "Inbox") if name == INBOX else (name,)
    return any(p.fullmatch(c) for p in patterns for c in candidates)


def _sorted(names: set[str]) -> list[str]:
    return sorted(names, key=lambda name: (name != INBOX, name))


def list_folders(session: ImapSession, command: Command) -> Step:
    args = command.args
    assert isinstance(args, ListArgs)
    if all(pattern == "" for pattern in args.patterns):     # RFC 9051 6.3.9: the delimiter
        return session.done(command, ImapData(b'LIST (\\Noselect) "." ""'))
    subscribed_only = "SUBSCRIBED" in args.select
    listing = _Listing(session, args.extended,
                       show_subscribed=subscribed_only or "SUBSCRIBED" in args.returns)
    patterns = [_pattern(session.folder_name(args.reference + p)) for p in args.patterns if p]
    names = listing.subscribed if subscribed_only else listing.every
    out: list[ImapData | ImapReply] = []
    for name in _sorted(names):
        if not _matches(patterns, name):
            continue
        if "SPECIAL-USE" in args.select and name not in SPECIAL_USE:
            continue
        out.append(listing.line(name))
        if "STATUS" in args.returns and name in listing.existing:
            out.append(_status_line(session, name, args.status))
    return session.done(command, *out)


def lsub(session: ImapSession, command: Command) -> Step:
    reference, pattern = command.args
    listing = _Listing(session, extended=False)
    patterns = [_pattern(session.folder_name(reference + pattern))]
    out = []
    for name in _sorted(listing.subscribed):
        if _matches(patterns, name):
            attrs = b"" if name in listing.existing else b"\\Noselect"
            out.append(ImapData(b"LSUB (" + attrs + b') "." ' + render.mailbox(name, session.utf8)))
    return session.done(command, *out)


def status(session: ImapSession, command: Command) -> Step:
    raw, items = command.args
    return session.done(command, _status_line(session, session.folder_name(raw), items))


def _status_line(session: ImapSession, name: str, items: tuple[str, ...]) -> ImapData:
    index = session._account().index(name)
    snapshot, _ = index.sync()
    values = []
    for item in items:
        if item == "MESSAGES":
            value = len(snapshot.uids)
        elif item == "UIDNEXT":
            value = snapshot.uidnext
        elif item == "UIDVALIDITY":
            value = snapshot.uidvalidity
        elif item == "UNSEEN":
            value = sum(1 for mask in snapshot.flags if not mask & SEEN)
        elif item == "DELETED":
            value = sum(1 for mask in snapshot.flags if mask & DELETED)
        elif item == "SIZE":
            value = sum(_size(index, uid) for uid in snapshot.uids)
        else:                                  # RECENT: mail no session has taken in yet
            value = sum(1 for uid in snapshot.uids if (index.name_of(uid) or ("",))[0] == "new")
        values.append(f"{item} {value}")
    return ImapData(b"STATUS " + render.mailbox(name, session.utf8) +
                    b" (" + " ".join(values).encode() + b")")


def _size(index: FolderIndex, uid: int) -> int:
    try:
        return index.size(uid)
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------- APPEND

def append(session: ImapSession, command: Command) -> Step:
    args = command.args
    assert isinstance(args, AppendArgs)
    sink = args.message
    if not isinstance(sink, MessageSink):      # framed as something else: cannot happen
        raise Reject(r.IMAP_SYNTAX.fill(detail="APPEND needs the message as a literal"))
    folder = session.folder_name(args.mailbox)
    try:
        index = session._account().index(folder)
    except FolderMissing:
        raise Reject(r.IMAP_TRY_CREATE) from None
    temp = sink.temp
    temp.finish()
    temp.close()
    if temp.size == 0:
        raise Reject(r.IMAP_EMPTY_MESSAGE)
    if args.date is not None:
        os.utime(temp.path, (args.date, args.date))
    name = renamed(temp.final_name(), flag_mask(args.flags))
    [uid] = index.add([(temp.path, name, True)])
    if uid is None:
        raise Reject(r.IMAP_TEMPORARY)
    temp.moved = True
    session.log.info("append", user=session.user, folder=folder, uid=uid,
                     octets=temp.crlf_size)
    return Step([r.IMAP_APPENDED.fill(validity=index.uidvalidity, uid=uid).tagged(command.tag)])
