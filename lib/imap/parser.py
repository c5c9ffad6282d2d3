"""The IMAP command grammar (RFC 9051 9, RFC 3501 9 and the extensions we
offer): tag, command name and each command's arguments, parsed into the
types below (FETCH attributes and SEARCH keys: see items.py). Anything
malformed raises ParseError (a tagged BAD)."""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .items import MONTHS, FetchItem, SequenceSet, fetch_items, search_args, sequence_set
from .lexer import LITERAL_ANNOUNCEMENT, ParseError, Reader, text

# ---------------------------------------------------------------- argument types

@dataclass(frozen=True)
class StoreArgs:
    messages: SequenceSet
    mode: str                     # "+", "-" or "" (replace)
    silent: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ListArgs:
    reference: str
    patterns: tuple[str, ...]
    select: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status: tuple[str, ...] = ()
    extended: bool = False        # RFC 5258 syntax used: the answer may carry extended data


@dataclass(frozen=True)
class AppendArgs:
    mailbox: str
    flags: tuple[str, ...]
    date: float | None            # seconds since the epoch
    message: object               # what the engine stored for the literal


@dataclass(frozen=True)
class Command:
    tag: str
    name: str                     # upper case; "UID FETCH" for the UID forms
    args: Any = None              # what GRAMMAR[name] returned: each handler knows its type
    uid: bool = False


# ---------------------------------------------------------------- pieces

def mailbox(reader: Reader) -> str:
    return text(reader.astring("a mailbox name"))


def flag(reader: Reader) -> str:
    if reader.skip(b"\\"):
        return "\\" + reader.atom("a flag")
    return reader.atom("a flag")


def flag_list(reader: Reader) -> tuple[str, ...]:
    return tuple(reader.parenthesised(lambda: flag(reader)))


def date_time(reader: Reader) -> float:
    """"dd-Mon-yyyy hh:mm:ss +zzzz" (the day may start with a space): epoch seconds."""
    value = reader.quoted().decode("ascii", "replace")
    try:
        day_part, clock, zone = value.removeprefix(" ").split(" ")
        day, month, year = day_part.split("-")
        hours, minutes, seconds = (int(x) for x in clock.split(":"))
        if len(zone) != 5 or zone[0] not in "+-" or not zone[1:].isdigit():
            raise ValueError(zone)
        offset = (int(zone[1:3]) * 60 + int(zone[3:])) * 60 * (1 if zone[0] == "+" else -1)
        moment = datetime.datetime(int(year), MONTHS.index(month.upper()) + 1, int(day),
                                   hours, minutes, seconds)
        return calendar.timegm(moment.timetuple()) - offset
    except (ValueError, IndexError):
        raise ParseError("Bad date-time") from None


# ---------------------------------------------------------------- LIST and STATUS

LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED",
                          "SIZE"})


def status_items(reader: Reader) -> tuple[str, ...]:
    items = tuple(reader.parenthesised(lambda: reader.keyword("a status item")))
    unknown = [item for item in items if item not in STATUS_ITEMS]
    if unknown or not items:
        raise ParseError("Bad status item " + (unknown[0][:30] if unknown else "list"))
    return items


def list_args(reader: Reader) -> ListArgs:
    reader.sp()
    select: frozenset[str] = frozenset()
    extended = False
    if reader.at(b"("):
        extended = True
        select = frozenset(reader.parenthesised(lambda: reader.keyword("a selection option")))
        if select - LIST_SELECT:
            raise ParseError("Unknown LIST selection option")
        reader.sp()
    reference = text(reader.astring("a reference name"))
    reader.sp()
    if reader.at(b"("):
        extended = True
        patterns = tuple(text(p) for p in reader.parenthesised(reader.list_mailbox))
        if not patterns:
            raise ParseError("Empty pattern list")
    else:
        patterns = (text(reader.list_mailbox()),)
    returns: set[str] = set()
    status: tuple[str, ...] = ()
    if reader.more():
        extended = True
        if reader.keyword("RETURN") != "RETURN":
            raise ParseError("Expected RETURN")
        reader.sp()

        def option() -> str:
            nonlocal status
            name = reader.keyword("a return option")
            if name == "STATUS":
                reader.sp()
                status = status_items(reader)
            return name
        returns = set(reader.parenthesised(option))
        if returns - LIST_RETURN:
            raise ParseError("Unknown LIST return option")
    return ListArgs(reference, patterns, select, frozenset(returns), status, extended)


# ---------------------------------------------------------------- commands

def _none(reader: Reader) -> None:
    return None


def _mailbox_arg(reader: Reader) -> str:
    reader.sp()
    return mailbox(reader)


def _login(reader: Reader) -> tuple[str, str]:
    reader.sp()
    user = text(reader.astring("a user name"))
    reader.sp()
    return user, text(reader.astring("a password"))


def _authenticate(reader: Reader) -> tuple[str, str | None]:
    reader.sp()
    mechanism = reader.keyword("a mechanism")
    if reader.more():
        return mechanism, reader.chars(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                                                 b"qrstuvwxyz0123456789+/="),
                                       "a base64 response").decode()
    return mechanism, None


def _id(reader: Reader) -> dict[str, str | None] | None:
    reader.sp()
    if reader.line[reader.pos:reader.pos + 3].upper() == b"NIL":
        reader.pos += 3
        return None
    values = reader.parenthesised(reader.nstring)
    if len(values) % 2 or len(values) > 60:
        raise ParseError("ID needs field and value pairs")
    fields: dict[str, str | None] = {}
    for key, value in zip(values[::2], values[1::2], strict=True):
        if key is None:
            raise ParseError("An ID field name cannot be NIL")
        fields[text(key)] = None if value is None else text(value)
    return fields


def _enable(reader: Reader) -> tuple[str, ...]:
    names = []
    while reader.more():
        names.append(reader.keyword("a capability"))
    if not names:
        raise ParseError("ENABLE needs a capability")
    return tuple(names)


def _select(reader: Reader) -> str:
    name = _mailbox_arg(reader)
    if reader.more():                     # RFC 4466 select parameters: none supported
        raise ParseError("No SELECT parameters are supported")
    return name


def _rename(reader: Reader) -> tuple[str, str]:
    old = _mailbox_arg(reader)
    return old, _mailbox_arg(reader)


def _lsub(reader: Reader) -> tuple[str, str]:
    reader.sp()
    reference = text(reader.astring("a reference name"))
    reader.sp()
    return reference, text(reader.list_mailbox())


def _status(reader: Reader) -> tuple[str, tuple[str, ...]]:
    name = _mailbox_arg(reader)
    reader.sp()
    return name, status_items(reader)


def _append(reader: Reader) -> AppendArgs:
    name = _mailbox_arg(reader)
    reader.sp()
    flags: tuple[str, ...] = ()
    when = None
    if reader.at(b"("):
        flags = flag_list(reader)
        reader.sp()
    if reader.at(b'"'):
        when = date_time(reader)
        reader.sp()
    if not (reader.at(b"{") or reader.at(b"~{")):
        raise ParseError("APPEND needs the message as a literal")
    return AppendArgs(name, flags, when, reader.literal(binary=True))


def _fetch(reader: Reader) -> tuple[SequenceSet, tuple[FetchItem, ...]]:
    reader.sp()
    messages = sequence_set(reader)
    reader.sp()
    return messages, fetch_items(reader)


def _store(reader: Reader) -> StoreArgs:
    reader.sp()
    messages = sequence_set(reader)
    reader.sp()
    mode = "+" if reader.skip(b"+") else "-" if reader.skip(b"-") else ""
    name = reader.keyword("FLAGS")
    if name not in ("FLAGS", "FLAGS.SILENT"):
        raise ParseError("Expected FLAGS or FLAGS.SILENT")
    reader.sp()
    if reader.at(b"("):
        flags = flag_list(reader)
    else:
        flags_list = [flag(reader)]
        while reader.more():
            flags_list.append(flag(reader))
        flags = tuple(flags_list)
    return StoreArgs(messages, mode, name.endswith(".SILENT"), flags)


def _copy(reader: Reader) -> tuple[SequenceSet, str]:
    reader.sp()
    messages = sequence_set(reader)
    return messages, _mailbox_arg(reader)


def _uid_expunge(reader: Reader) -> SequenceSet:
    reader.sp()
    return sequence_set(reader)


GRAMMAR: dict[str, Callable[[Reader], object]] = {
    "CAPABILITY": _none, "NOOP": _none, "LOGOUT": _none, "STARTTLS": _none,
    "LOGIN": _login, "AUTHENTICATE": _authenticate, "ID": _id, "ENABLE": _enable,
    "NAMESPACE": _none, "IDLE": _none, "SELECT": _select, "EXAMINE": _select,
    "CREATE": _mailbox_arg, "DELETE": _mailbox_arg, "RENAME": _rename,
    "SUBSCRIBE": _mailbox_arg, "UNSUBSCRIBE": _mailbox_arg, "LIST": list_args, "LSUB": _lsub,
    "STATUS": _status, "APPEND": _append, "CHECK": _none, "CLOSE": _none, "UNSELECT": _none,
    "EXPUNGE": _none, "SEARCH": search_args, "FETCH": _fetch, "STORE": _store, "COPY": _copy,
    "MOVE": _copy,
    "UID SEARCH": search_args, "UID FETCH": _fetch, "UID STORE": _store, "UID COPY": _copy,
    "UID MOVE": _copy, "UID EXPUNGE": _uid_expunge,
}


def _head(reader: Reader) -> tuple[str, str]:
    """The tag and the command name. A bad tag raises ParseError with no tag (an
    untagged BAD); anything after it, one with the tag (a tagged BAD)."""
    tag = reader.tag()
    try:
        reader.sp()
        name = reader.keyword("a command")
        if name == "UID" and reader.more():
            name = "UID " + reader.keyword("a command")
    except ParseError as error:
        error.tag = tag
        raise
    return tag, name


def parse_command(segments: Sequence[bytes], literals: Sequence[object] = ()) -> Command:
    """The whole command, or ParseError (whose `tag` says who gets the BAD)."""
    reader = Reader(segments, literals)
    tag, name = _head(reader)
    try:
        grammar = GRAMMAR.get(name)
        if grammar is None:
            raise ParseError("Unknown command")
        args = grammar(reader)
        reader.end()
    except ParseError as error:
        error.tag = tag
        raise
    return Command(tag, name, args, uid=name.startswith("UID "))


def append_target(segments: Sequence[bytes], literals: Sequence[object]) -> str | None:
    """The mailbox, when the literal just announced is an APPEND's message."""
    try:
        reader = Reader(segments, literals)
        _, name = _head(reader)
        if name != "APPEND":
            return None
        target = _mailbox_arg(reader)
        reader.sp()
        if reader.at(b"("):
            flag_list(reader)
            reader.sp()
        if reader.at(b'"'):
            date_time(reader)
            reader.sp()
        if reader.index == len(segments) - 1 and LITERAL_ANNOUNCEMENT.match(reader.line,
                                                                            reader.pos):
            return target
    except ParseError:
        pass
    return None
