"""IMAP response syntax (RFC 9051 4 and 9): strings quoted or as literals,
NIL, flag lists, sequence sets, dates; everything the engine writes goes
through these, so a client's bytes never break the framing."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..store import mutf7
from ..store.folderindex import FLAG_NAMES

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MAX_QUOTED = 1024         # longer strings go as literals: easier on clients' buffers


def string(value: str | bytes, utf8: bool = False) -> bytes:
    """A quoted string when it can be one (no CR, LF or NUL; 8-bit only with
    UTF8=ACCEPT or IMAP4rev2), else a literal."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(raw) <= MAX_QUOTED and b"\r" not in raw and b"\n" not in raw and \
            b"\0" not in raw and (utf8 or raw.isascii()):
        if b'"' in raw or b"\\" in raw:
            raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + raw + b'"'
    return literal(raw)


def literal(raw: bytes) -> bytes:
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8)


def mailbox(name: str, utf8: bool) -> bytes:
    """A folder name on the wire: UTF-8 once enabled, else modified UTF-7."""
    return string(name if utf8 else mutf7.encode(name), utf8)


def _flag_text(mask: int) -> bytes:
    return b"(" + " ".join(FLAG_NAMES[bit] for bit in sorted(FLAG_NAMES)
                           if mask & bit).encode() + b")"


FLAG_LISTS = tuple(_flag_text(mask) for mask in range(32))
RECENT_FLAG_LISTS = tuple(b"(\\Recent" + (b" " + text[1:] if text != b"()" else b")")
                          for text in FLAG_LISTS)


def flags(mask: int, recent: bool = False) -> bytes:
    return (RECENT_FLAG_LISTS if recent else FLAG_LISTS)[mask & 31]


def sequence_set(numbers: Iterable[int]) -> str:
    """Ascending numbers as a compact set: 1:3,7,9:10."""
    parts: list[str] = []
    start = previous = -1
    for number in numbers:
        if number == previous + 1 and start >= 0:
            previous = number
            continue
        if start >= 0:
            parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = number
    if start >= 0:
        parts.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(parts)


def date_time(seconds: float) -> bytes:
    """INTERNALDATE: "17-Jul-1996 02:44:25 -0700", in the server's time zone."""
    local = time.localtime(seconds)
    offset = local.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    return (f'"{local.tm_mday:2d}-{MONTHS[local.tm_mon - 1]}-{local.tm_year:04d} '
            f'{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} '
            f'{sign}{offset // 60:02d}{offset % 60:02d}"').encode()
