"""IMAP commands on the selected folder's messages (RFC 9051 6.4): FETCH,
STORE, SEARCH (with ESEARCH and SEARCHRES), COPY, MOVE (RFC 6851), EXPUNGE
and UID EXPUNGE (RFC 4315), each also as a UID command; COPY and MOVE
answer with COPYUID (UIDPLUS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import replies as r
from ..core.errors import Reject
from ..core.replies import ImapData, ImapReply
from ..session.engine import Step
from ..store.folderindex import DELETED, SEEN
from ..store.folders import FolderMissing
from . import render
from .fetch import Fetcher
from .items import BodyItem, SearchArgs, SequenceSet
from .mailboxes import flag_mask
from .parser import Command, StoreArgs
from .search import Searcher
from .selected import Selected

if TYPE_CHECKING:
    from .session import ImapSession

CHARSETS = ("US-ASCII", "UTF-8")


def _view(session: ImapSession) -> Selected:
    if session.selected is None:
        raise RuntimeError("a selected-state command without a selected folder")
    return session.selected


def _writable(session: ImapSession) -> Selected:
    view = _view(session)
    if view.read_only:
        raise Reject(r.IMAP_READ_ONLY)
    return view


# ---------------------------------------------------------------- FETCH

def fetch(session: ImapSession, command: Command) -> Step:
    view = _view(session)
    messages, items = command.args
    if command.uid and "UID" not in items:
        items = ("UID", *items)                          # RFC 9051 6.4.9
    marks_seen = not view.read_only and any(_marks_seen(item) for item in items)
    updates = view.refresh(allow_expunge=command.uid, with_uid=command.uid,
                           fast=not marks_seen)
    positions = view.resolve(messages, command.uid)
    changed: set[int] = set()
    if marks_seen:
        for position in positions:
            uid = view.uids[position]
            if view.flags[position] & SEEN or uid in view.vanished:
                continue
            flags = view.index.change_flags(uid, lambda old: old | SEEN)
            if flags is not None:
                view.flags[position] = flags
                changed.add(position)
    fetcher = Fetcher(view, session.cache, session.log, session.utf8)
    body = fetcher.responses(positions, items, command.tag, command.name, changed)
    return Step(list(updates), body=body)


def _marks_seen(item: object) -> bool:
    """BODY[...] and RFC822(.TEXT) set \\Seen; BODY.PEEK[...] and RFC822.HEADER do not."""
    if isinstance(item, BodyItem):
        return not item.peek
    return item in ("RFC822", "RFC822.TEXT")


# ---------------------------------------------------------------- STORE

def store(session: ImapSession, command: Command) -> Step:
    view = _writable(session)
    args = command.args
    assert isinstance(args, StoreArgs)
    mask = flag_mask(args.flags)
    if args.mode == "+":
        def change(old: int) -> int:
            return old | mask
    elif args.mode == "-":
        def change(old: int) -> int:
            return old & ~mask
    else:
        def change(old: int) -> int:
            return mask
    out: list[ImapData | ImapReply] = []
    missing = False
    for position in view.resolve(args.messages, command.uid):
        uid = view.uids[position]
        flags = None if uid in view.vanished else view.index.change_flags(uid, change)
        if flags is None:
            missing = True
            continue
        view.flags[position] = flags
        if not args.silent:
            out.append(view.flags_response(position, with_uid=command.uid))
    view.index.flush()
    done = r.IMAP_EXPUNGE_ISSUED if missing else r.IMAP_DONE.fill(command=command.name)
    return Step([*out, done.tagged(command.tag)])


# ---------------------------------------------------------------- SEARCH

def search(session: ImapSession, command: Command) -> Step:
    view = _view(session)
    args = command.args
    assert isinstance(args, SearchArgs)
    if args.charset is not None and args.charset not in CHARSETS:
        raise Reject(r.IMAP_BAD_CHARSET)
    returns = args.returns
    if returns is not None and "SAVE" in returns:
        view.saved = []                       # RFC 5182 2.1: a failed search saves nothing
    positions = Searcher(view, session.cache, session.log).positions(args.key)
    numbers = [view.uids[p] if command.uid else p + 1 for p in positions]
    out: list[ImapData | ImapReply] = []
    if returns is None and not session.utf8:
        out.append(ImapData(b"SEARCH" + b"".join(b" %d" % n for n in numbers)))
    else:
        options = returns or ("ALL",)
        if "SAVE" in options:
            view.saved = [view.uids[p] for p in positions]
        if set(options) - {"SAVE"} or not options:
            out.append(_esearch(command, options, numbers))
    return session.done(command, *out)


def _esearch(command: Command, options: tuple[str, ...], numbers: list[int]) -> ImapData:
    """RFC 4731: * ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9."""
    parts = [b"ESEARCH (TAG " + render.string(command.tag) + b")"]
    if command.uid:
        parts.append(b"UID")
    if "MIN" in options and numbers:
        parts.append(b"MIN %d" % numbers[0])
    if "MAX" in options and numbers:
        parts.append(b"MAX %d" % numbers[-1])
    if "COUNT" in options:
        parts.append(b"COUNT %d" % len(numbers))
    if ("ALL" in options or options == ("SAVE",)) and numbers:
        parts.append(b"ALL " + render.sequence_set(numbers).encode())
    return ImapData(b" ".join(parts))


# ---------------------------------------------------------------- COPY, MOVE

def copy(session: ImapSession, command: Command) -> Step:
    return _transfer(session, command, move=False)


def move(session: ImapSession, command: Command) -> Step:
    _writable(session)
    return _transfer(session, command, move=True)


def _transfer(session: ImapSession, command: Command, move: bool) -> Step:
    view = _view(session)
    messages, raw_target = command.args
    assert isinstance(messages, SequenceSet)
    try:
        target = session._account().index(session.folder_name(raw_target))
    except FolderMissing:
        raise Reject(r.IMAP_TRY_CREATE) from None
    positions = view.resolve(messages, command.uid)
    sources: list[int] = []
    files = []
    for position in positions:
        uid = view.uids[position]
        entry = view.index.name_of(uid)
        if entry is None or uid in view.vanished:
            continue
        sub, name = entry
        base, _, info = name.partition(":")
        sizes = base[base.find(","):] if "," in base else ""
        fresh = session.services.store.unique_base() + sizes + ":" + (info or "2,")
        sources.append(uid)
        files.append((view.index.filename(uid) or "", fresh, move))
    given = target.add(files) if files else []
    if not move and None in given:             # RFC 9051 6.4.7: all or nothing
        target.remove([uid for uid in given if uid is not None])
        raise Reject(r.IMAP_EXPUNGE_ISSUED)
    pairs = [(source, uid) for source, uid in zip(sources, given, strict=True) if uid]
    if move and pairs:
        view.index.flush()
    session.log.info("move" if move else "copy", user=session.user, folder=view.name,
                     to=raw_target, count=len(pairs))
    if not pairs:
        if positions and not move:
            raise Reject(r.IMAP_EXPUNGE_ISSUED)
        return session.done(command)
    uid_sets = {"validity": target.uidvalidity,
                "source": render.sequence_set(s for s, _ in pairs),
                "target": render.sequence_set(t for _, t in pairs)}
    if move:                                   # RFC 6851: COPYUID first, then the EXPUNGEs
        return session.done(command, r.IMAP_MOVED_UIDS.fill(**uid_sets))
    return Step([r.IMAP_COPIED.fill(**uid_sets).tagged(command.tag)])


# ---------------------------------------------------------------- EXPUNGE

def expunge(session: ImapSession, command: Command) -> Step:
    """EXPUNGE, or UID EXPUNGE of a set (RFC 4315): the files go now; the EXPUNGE
    responses come from the refresh that follows every command."""
    view = _writable(session)
    updates = view.refresh(allow_expunge=True, with_uid=command.uid)
    positions = view.resolve(command.args, by_uid=True) if command.uid else range(view.count)
    doomed = [view.uids[p] for p in positions
              if view.flags[p] & DELETED and view.uids[p] not in view.vanished]
    removed = view.index.remove(doomed)
    if removed:
        session.log.info("expunge", user=session.user, folder=view.name, count=len(removed))
    return session.done(command, *updates)
