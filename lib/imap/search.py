"""SEARCH (RFC 9051 6.4.4): which messages of the selected folder match a key.

Keys are tried cheapest first (flags and numbers before dates, headers before
bodies), and a message's file is opened only when a key needs its header or
text. Strings match as case-insensitive substrings of the decoded text:
header fields with their RFC 2047 words decoded, bodies of text parts with
their transfer encoding and charset undone. Dates are compared in the
server's time zone, ignoring the time of day (INTERNALDATE for BEFORE/ON/
SINCE, the Date: field for the SENT* keys).
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.errors
import email.header
import email.utils
from collections.abc import Iterator

from ..log.events import EventLog
from . import mime
from .cache import MessageCache
from .items import STAR, SearchKey, SequenceSet
from .message import MessageFile, field_value, header_fields, open_stored
from .selected import Selected

_COST = {"ALL": 0, "FLAG": 0, "NEW": 0, "OLD": 0, "RECENT": 0, "UID": 0, "SEQ": 0,
         "KEYWORD": 0, "UNKEYWORD": 0, "LARGER": 1, "SMALLER": 1, "BEFORE": 2, "ON": 2,
         "SINCE": 2, "SENTBEFORE": 3, "SENTON": 3, "SENTSINCE": 3, "HEADER": 3,
         "BODY": 4, "TEXT": 4}
_FLAG_BITS = {"D": 1, "F": 2, "R": 4, "S": 8, "T": 16}
PLAIN_SEARCH_LIMIT = 1024 * 1024      # bigger messages are searched part by part


def _cost(key: SearchKey) -> int:
    if key.op in ("NOT", "OR", "AND"):
        children = key.args if key.op != "NOT" else key.args[:1]
        return max((_cost(child) for child in children if isinstance(child, SearchKey)),
                   default=0)
    return _COST.get(key.op, 4)


class _Message:
    """One message being tested; what the keys ask for is read once."""

    def __init__(self, searcher: Searcher, position: int):
        self.searcher = searcher
        self.position = position
        self.uid = searcher.view.uids[position]
        self._file: MessageFile | None = None
        self._header: bytes | None = None
        self._text: str | None = None
        self._plain: bytes | None = None

    def plain(self) -> bytes | None:
        """The whole message lower-cased, when nothing in it is encoded (no
        base64, quoted-printable, encoded words or 16-bit charsets), so that an
        ASCII string is in its text exactly when it is in these bytes. None
        for such messages and big ones: they are decoded part by part."""
        if self._plain is None:
            source = self.file()
            if source.size > PLAIN_SEARCH_LIMIT:
                self._plain = b""
            else:
                lowered = source.read(0, source.size).lower()
                # Encodings are declared in headers: a single part has only the top one.
                header = lowered[:len(self.header())]
                nested = b"multipart" in header or b"message/" in header
                looked = lowered if nested else header
                encoded = b"=?" in looked or b"base64" in looked or \
                    b"quoted-printable" in looked or b"utf-16" in looked or \
                    b"utf-32" in looked or b"utf-7" in looked
                self._plain = b"" if encoded else lowered
        return self._plain or None

    def file(self) -> MessageFile:
        if self._file is None:
            self._file = open_stored(self.searcher.view.index, self.uid)
        return self._file

    def header(self) -> bytes:
        if self._header is None:
            source = self.file()
            self._header = source.read(0, source.header_end())
        return self._header

    def text(self) -> str:
        """The decoded text of the body's text parts, case-folded."""
        if self._text is None:
            source = self.file()
            name = (self.searcher.view.index.name_of(self.uid) or ("", ""))[1].partition(":")[0]
            cache = self.searcher.cache
            part = cache.get("structure", name)
            if not isinstance(part, mime.Part):
                part = mime.parse(source)
            self._text = "\n".join(_texts(source, part)).casefold()
        return self._text

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Searcher:
    def __init__(self, view: Selected, cache: MessageCache, log: EventLog):
        self.view = view
        self.cache = cache
        self.log = log
        self._sets: dict[int, frozenset[int]] = {}

    def positions(self, key: SearchKey) -> list[int]:
        """0-based positions of the matching messages, ascending; a message whose
        file has gone (expunged elsewhere) does not match keys that read it."""
        key = _ordered(key)
        found = []
        for position in range(self.view.count):
            message = _Message(self, position)
            try:
                if self._match(key, message):
                    found.append(position)
            except FileNotFoundError:
                pass
            finally:
                message.close()
        return found

    def _match(self, key: SearchKey, message: _Message) -> bool:
        op, args = key.op, key.args
        view = self.view
        if op == "AND":
            return all(self._match(child, message) for child in args)
        if op == "OR":
            return self._match(args[0], message) or self._match(args[1], message)
        if op == "NOT":
            return not self._match(args[0], message)
        if op == "ALL":
            return True
        if op == "FLAG":
            return bool(view.flags[message.position] & _FLAG_BITS[args[0]]) == args[1]
        if op in ("NEW", "OLD", "RECENT"):
            recent = message.uid in view.recent
            if op == "NEW":
                return recent and not view.flags[message.position] & 8
            return recent if op == "RECENT" else not recent
        if op in ("UID", "SEQ"):
            return message.position in self._set(key)
        if op in ("KEYWORD", "UNKEYWORD"):
            return op == "UNKEYWORD"           # keywords are not stored
        if op in ("LARGER", "SMALLER"):
            size = view.index.size(message.uid)
            return size > args[0] if op == "LARGER" else size < args[0]
        if op in ("BEFORE", "ON", "SINCE"):
            day = datetime.date.fromtimestamp(view.index.internal_date(message.uid))
            return _compare(op, day, args[0])
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return _compare(op[4:], self._sent(message), args[0])
        if op == "HEADER":
            return _header_has(message.header(), args[0], args[1])
        if op in ("BODY", "TEXT") and args[0].isascii():
            plain = message.plain()
            if plain is not None:
                start = len(message.header()) if op == "BODY" else 0
                return plain.find(args[0].lower().encode(), start) >= 0
        if op == "BODY":
            return args[0].casefold() in message.text()
        if op == "TEXT":
            needle = args[0].casefold()
            return needle in _decoded_header(message.header()).casefold() or \
                needle in message.text()
        raise ValueError(f"unknown search key {op}")

    def _set(self, key: SearchKey) -> frozenset[int]:
        """The positions a UID or SEQ key names (worked out once per search)."""
        cached = self._sets.get(id(key))
        if cached is None:
            messages: SequenceSet = key.args[0]
            if messages.saved:
                cached = frozenset(self.view.resolve(messages, True))
            elif key.op == "UID":
                cached = frozenset(self.view.resolve(messages, True))
            else:
                count = self.view.count
                chosen: set[int] = set()
                for low, high in messages.ranges:
                    low, high = low or count, high or count
                    if low == STAR or high == STAR:
                        continue
                    low, high = min(low, high), max(low, high)
                    chosen.update(range(max(low, 1) - 1, min(high, count)))
                cached = frozenset(chosen)
            self._sets[id(key)] = cached
        return cached

    def _sent(self, message: _Message) -> datetime.date:
        value = _first(message.header(), b"date")
        parsed = email.utils.parsedate_tz(value.decode("ascii", "replace")) if value else None
        if parsed is not None:
            try:
                return datetime.date(parsed[0], parsed[1], parsed[2])
            except ValueError:
                pass
        return datetime.date.fromtimestamp(self.view.index.internal_date(message.uid))


def _ordered(key: SearchKey) -> SearchKey:
    """The same key with the children of every AND tried cheapest first."""
    if key.op == "AND":
        return SearchKey("AND", tuple(sorted((_ordered(k) for k in key.args), key=_cost)))
    if key.op in ("OR", "NOT"):
        return SearchKey(key.op, tuple(_ordered(k) for k in key.args))
    return key


def _compare(op: str, day: datetime.date, wanted: datetime.date) -> bool:
    if op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted


def _first(header: bytes, name: bytes) -> bytes | None:
    for field, lines in header_fields(header):
        if field == name:
            return field_value(lines)
    return None


def _decode_words(value: bytes) -> str:
    """A header value with its RFC 2047 encoded words decoded."""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return text


def _header_has(header: bytes, name: str, needle: str) -> bool:
    wanted = name.lower().encode("utf-8", "surrogateescape")
    needle = needle.casefold()
    for field, lines in header_fields(header):
        if field == wanted and needle in _decode_words(field_value(lines)).casefold():
            return True
    return False


def _decoded_header(header: bytes) -> str:
    return "\n".join(name.decode("ascii", "replace") + ": " + _decode_words(field_value(lines))
                     for name, lines in header_fields(header))


def _texts(source: MessageFile, part: mime.Part) -> Iterator[str]:
    """The decoded text of every text part (and the headers of attached messages)."""
    if part.children:
        for child in part.children:
            yield from _texts(source, child)
    elif part.message is not None:
        yield _decoded_header(source.read(part.message.start, part.message.body))
        yield from _texts(source, part.message)
    elif part.maintype == "text":
        raw = source.read(part.body, part.end)
        if part.encoding == "BASE64":
            try:
                raw = binascii.a2b_base64(raw)
            except binascii.Error:
                pass
        elif part.encoding == "QUOTED-PRINTABLE":
            raw = binascii.a2b_qp(raw)
        charset = dict(part.params).get("charset", "utf-8") or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        yield raw.decode(charset, "replace")
