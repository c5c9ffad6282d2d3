"""The grammar of what FETCH and SEARCH take (RFC 9051 6.4.4, 6.4.5, 9):
sequence sets, fetch attributes and body sections, search keys and dates,
parsed into the types below. Anything malformed raises ParseError."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .lexer import ParseError, Reader, text

STAR = 0                      # "*" in a sequence set: the highest number in use
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MAX_SEARCH_DEPTH = 50         # nested NOT/OR/parentheses: a recursion bound


@dataclass(frozen=True)
class SequenceSet:
    """Numbers or UIDs: (low, high) ranges, STAR for "*"; `saved` is "$" (RFC 5182)."""
    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False


@dataclass(frozen=True)
class Section:
    """A body section (RFC 9051 6.4.5): part numbers, then HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT, MIME or nothing."""
    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class BodyItem:
    """BODY[...], BODY.PEEK[...], BINARY[...], BINARY.PEEK[...], with <partial>."""
    section: Section
    peek: bool = False
    binary: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class BinarySize:
    part: tuple[int, ...]


FetchItem = str | BodyItem | BinarySize
SIMPLE_FETCH = frozenset({"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY",
                          "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"})
FETCH_MACROS = {"ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
                "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
                "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")}


@dataclass(frozen=True)
class SearchKey:
    op: str                       # ALL, FLAG, HEADER, BODY, TEXT, SINCE, ..., NOT, OR, AND
    args: tuple = ()


@dataclass(frozen=True)
class SearchArgs:
    key: SearchKey
    charset: str | None = None
    returns: tuple[str, ...] | None = None     # ESEARCH RETURN options; None: plain SEARCH


# ---------------------------------------------------------------- sequence sets and dates

def sequence_set(reader: Reader) -> SequenceSet:
    if reader.skip(b"$"):
        return SequenceSet(saved=True)
    ranges = []
    while True:
        low = _seq_number(reader)
        high = _seq_number(reader) if reader.skip(b":") else low
        ranges.append((low, high))
        if not reader.skip(b","):
            return SequenceSet(tuple(ranges))


def _seq_number(reader: Reader) -> int:
    if reader.skip(b"*"):
        return STAR
    return reader.nz_number()


def date(reader: Reader) -> datetime.date:
    """date = date-text / DQUOTE date-text DQUOTE; date-text = d[d]-Mon-yyyy."""
    value = reader.quoted() if reader.at(b'"') else reader.chars(_DATE_CHARS, "a date")
    try:
        day, month, year = value.decode("ascii").split("-")
        if not (1 <= len(day) <= 2 and len(year) == 4 and day.isdigit() and year.isdigit()):
            raise ValueError(value)
        return datetime.date(int(year), MONTHS.index(month.upper()) + 1, int(day))
    except ValueError:
        raise ParseError("Bad date") from None


# ---------------------------------------------------------------- FETCH

FETCH_LISTS_KEPT = 256       # parsed FETCH item lists remembered, by their text


def fetch_items(reader: Reader) -> tuple[FetchItem, ...]:
    """The items of a FETCH. A client sends the same list again and again (one
    FETCH per message): when they end the command, the parse of the same text
    is taken as it was (items are immutable)."""
    last = reader.index == len(reader.segments) - 1
    text = reader.line[reader.pos:] if last else b""
    known = _fetch_lists.get(text) if last else None
    if known is not None:
        reader.pos = len(reader.line)
        return known
    items = _fetch_items(reader)
    if last and reader.at_end():
        if len(_fetch_lists) >= FETCH_LISTS_KEPT:
            _fetch_lists.clear()
        _fetch_lists[text] = items
    return items


_fetch_lists: dict[bytes, tuple[FetchItem, ...]] = {}


def _fetch_items(reader: Reader) -> tuple[FetchItem, ...]:
    if reader.at(b"("):
        items = tuple(reader.parenthesised(lambda: fetch_item(reader)))
        if not items:
            raise ParseError("Empty fetch list")
        return items
    name = _fetch_name(reader)
    if name in FETCH_MACROS:
        return FETCH_MACROS[name]
    return (_fetch_rest(reader, name),)


def _fetch_name(reader: Reader) -> str:
    return reader.chars(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  b"0123456789."), "a fetch attribute").decode().upper()


def fetch_item(reader: Reader) -> FetchItem:
    return _fetch_rest(reader, _fetch_name(reader))


def _fetch_rest(reader: Reader, name: str) -> FetchItem:
    if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and reader.at(b"["):
        binary = name.startswith("BINARY")
        reader.expect(b"[")
        if binary:
            part = _binary_part(reader)
            reader.expect(b"]")
            if name == "BINARY.SIZE":
                return BinarySize(part)
            section = Section(part)
        else:
            section = _section(reader)
        partial = None
        if reader.skip(b"<"):
            start = reader.number()
            reader.expect(b".")
            partial = (start, reader.nz_number())
            reader.expect(b">")
        return BodyItem(section, peek=name.endswith(".PEEK"), binary=binary, partial=partial)
    if name in SIMPLE_FETCH:
        return name
    raise ParseError(f"Unknown fetch attribute {name[:40]}")


def _binary_part(reader: Reader) -> tuple[int, ...]:
    """BINARY[1.2]: part numbers only (RFC 3516 4.1)."""
    part: list[int] = []
    if reader.at(b"]"):
        return ()
    while True:
        part.append(reader.nz_number())
        if not reader.skip(b"."):
            return tuple(part)


def _section(reader: Reader) -> Section:
    """section-spec: part numbers "1.2" and/or a section text, up to "]"."""
    part: list[int] = []
    while reader.peek() in _DIGITS:
        part.append(reader.nz_number())
        if reader.skip(b"]"):
            return Section(tuple(part))
        reader.expect(b".")
    if not part and reader.skip(b"]"):
        return Section()
    keyword = reader.chars(_SECTION_CHARS, "a section").decode().upper()
    if keyword not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME") or \
            (keyword == "MIME" and not part):
        raise ParseError("Bad section")
    fields: tuple[str, ...] = ()
    if keyword.startswith("HEADER.FIELDS"):
        reader.sp()
        fields = tuple(text(f).upper() for f in reader.parenthesised(reader.astring))
        if not fields:
            raise ParseError("Empty header list")
    reader.expect(b"]")
    return Section(tuple(part), keyword, fields)


_DIGITS = frozenset(b"0123456789")
_NONZERO = frozenset(b"123456789")
_SECTION_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
_DATE_CHARS = _SECTION_CHARS | _DIGITS | {ord("-")}


# ---------------------------------------------------------------- SEARCH

def search_args(reader: Reader, esearch: bool = True) -> SearchArgs:
    returns = None
    charset = None
    reader.sp()
    if esearch and reader.line[reader.pos:reader.pos + 7].upper() == b"RETURN ":
        reader.pos += 7
        returns = tuple(o.upper() for o in reader.parenthesised(
            lambda: reader.keyword("a return option")))
        reader.sp()
    if reader.line[reader.pos:reader.pos + 8].upper() == b"CHARSET ":
        reader.pos += 8
        charset = text(reader.astring()).upper()
        reader.sp()
    keys = [search_key(reader, 0)]
    while reader.more():
        keys.append(search_key(reader, 0))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return SearchArgs(key, charset, returns)


_FLAG_KEYS = {"ANSWERED": ("R", True), "DELETED": ("T", True), "DRAFT": ("D", True),
              "FLAGGED": ("F", True), "SEEN": ("S", True), "UNANSWERED": ("R", False),
              "UNDELETED": ("T", False), "UNDRAFT": ("D", False), "UNFLAGGED": ("F", False),
              "UNSEEN": ("S", False)}
_ADDRESS_KEYS = ("FROM", "TO", "CC", "BCC", "SUBJECT")
_DATE_KEYS = ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE")


def search_key(reader: Reader, depth: int) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise ParseError("Search keys nested too deeply")
    if reader.at(b"("):
        keys = reader.parenthesised(lambda: search_key(reader, depth + 1))
        if not keys:
            raise ParseError("Empty search group")
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if reader.at(b"*") or reader.at(b"$") or reader.peek() in _NONZERO:
        return SearchKey("SEQ", (sequence_set(reader),))
    name = reader.keyword("a search key")
    if name in ("ALL", "NEW", "OLD", "RECENT"):
        return SearchKey(name)
    if name in _FLAG_KEYS:
        return SearchKey("FLAG", _FLAG_KEYS[name])
    reader.sp()
    if name in _ADDRESS_KEYS:
        return SearchKey("HEADER", (name, text(reader.astring())))
    if name in ("BODY", "TEXT"):
        return SearchKey(name, (text(reader.astring()),))
    if name == "HEADER":
        field_name = text(reader.astring()).upper()
        reader.sp()
        return SearchKey("HEADER", (field_name, text(reader.astring())))
    if name in _DATE_KEYS:
        return SearchKey(name, (date(reader),))
    if name in ("LARGER", "SMALLER"):
        return SearchKey(name, (reader.number(2**63 - 1),))
    if name == "UID":
        return SearchKey("UID", (sequence_set(reader),))
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(name, (reader.atom("a keyword"),))
    if name == "NOT":
        return SearchKey("NOT", (search_key(reader, depth + 1),))
    if name == "OR":
        first = search_key(reader, depth + 1)
        reader.sp()
        return SearchKey("OR", (first, search_key(reader, depth + 1)))
    raise ParseError(f"Unknown search key {name[:40]}")
