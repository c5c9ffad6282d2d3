"""The MIME structure of a message (RFC 2045, 2046) by offsets: where each
part's header and body start and end, how many lines they have, and their
content types, from which BODYSTRUCTURE and BODY (RFC 9051 7.5.2) are built
and body sections (BODY[1.2.MIME]) are found.

The file is read once in chunks; lines are looked at only in headers and
where a line starts with "--" (a possible boundary), so a 25 MB attachment
costs a few searches, not a Python loop over its lines. The CRLF before a
boundary belongs to the boundary (RFC 2046 5.1.1), not to the part before it.
Header values are parsed with the standard library's `email` package.
"""

from __future__ import annotations

import email.message
import email.utils
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from . import render
from .message import MAX_HEADER, MessageFile, envelope, field_value, header_fields

SCAN_CHUNK = 256 * 1024
MAX_DEPTH = 40                  # nested multiparts / messages: a bound for hostile input
MAX_PARTS = 5000


class Boundary(NamedTuple):
    """A delimiter line found: where it starts, the LFs before it, which boundary."""
    offset: int
    lfs: int
    boundary: bytes
    closing: bool


@dataclass
class Part:
    start: int                        # the part's header (stored-form offsets)
    body: int = 0
    end: int = 0
    header_lfs: int = 0
    body_lfs: int = 0
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    encoding: str = "7BIT"
    fields: dict[bytes, bytes] = field(default_factory=dict)   # id, description, ...
    children: list[Part] = field(default_factory=list)         # multipart
    message: Part | None = None       # message/rfc822: the message inside
    envelope: bytes = b""             # and its ENVELOPE

    @property
    def header_size(self) -> int:
        return self.body - self.start + self.header_lfs

    @property
    def body_size(self) -> int:
        return self.end - self.body + self.body_lfs

    def subparts(self) -> list[Part]:
        """What part numbers index inside this part (RFC 9051 6.4.5)."""
        if self.children:
            return self.children
        if self.message is not None:
            inner = self.message
            return inner.children if inner.children else [inner]
        return [self] if self.maintype != "multipart" else []

    def find(self, numbers: tuple[int, ...]) -> Part | None:
        """The part that section numbers such as (1, 2) name; None if none does."""
        node = self
        for number in numbers:
            below = node.subparts()
            if not 1 <= number <= len(below):
                return None
            node = below[number - 1]
        return node


class Scanner:
    """Reads a message line by line where needed, and skips fast where not."""

    def __init__(self, source: MessageFile):
        self.source = source
        self.buf = b""
        self.base = 0                 # offset of buf[0]
        self.pos = 0                  # next unread offset
        self.lfs = 0                  # LFs before pos
        self.parts = 0

    def _more(self) -> bool:
        piece = self.source.read(self.base + len(self.buf), self.base + len(self.buf) + SCAN_CHUNK)
        if not piece:
            return False
        keep = self.pos - self.base
        self.buf = self.buf[keep:] + piece
        self.base = self.pos
        return True

    def readline(self) -> bytes | None:
        while True:
            at = self.pos - self.base
            end = self.buf.find(b"\n", at)
            if end >= 0:
                line = self.buf[at:end + 1]
                self.pos += len(line)
                self.lfs += 1
                return line
            if not self._more():
                line = self.buf[at:]
                self.pos += len(line)
                return line or None

    def skip_to(self, stack: list[bytes]) -> Boundary | None:
        """Consume lines up to and including the next delimiter of a boundary in
        `stack` (innermost wins); None at the end of the message."""
        if not stack:
            self._to_end()
            return None
        while True:
            at = self.pos - self.base
            buf = self.buf
            start = at if buf.startswith(b"--", at) else buf.find(b"\n--", at) + 1
            if start > 0 or (start == at and buf.startswith(b"--", at)):
                end = buf.find(b"\n", start)
                if end < 0 and self._more():
                    continue
                line_end = end + 1 if end >= 0 else len(buf)
                self.lfs += buf.count(b"\n", at, start)
                offset, lfs = self.base + start, self.lfs
                self.pos = self.base + line_end
                self.lfs += 1 if end >= 0 else 0
                found = _delimiter(buf[start:line_end], stack)
                if found is not None:
                    return Boundary(offset, lfs, found[0], found[1])
                continue
            cut = buf.rfind(b"\n") + 1            # keep a partial last line for the next look
            if cut > at:
                self.lfs += buf.count(b"\n", at, cut)
                self.pos = self.base + cut
            if not self._more():
                self._to_end()
                return None

    def _to_end(self) -> None:
        at = self.pos - self.base
        self.lfs += self.buf.count(b"\n", at)
        self.pos = self.base + len(self.buf)
        for piece in self.source.chunks(self.pos, self.source.size):
            self.lfs += piece.count(b"\n")
            self.pos += len(piece)
        self.buf, self.base = b"", self.pos


def _delimiter(line: bytes, stack: list[bytes]) -> tuple[bytes, bool] | None:
    text = line.rstrip(b" \t\r\n")
    for boundary in reversed(stack):
        if text == b"--" + boundary:
            return boundary, False
        if text == b"--" + boundary + b"--":
            return boundary, True
    return None


def parse(source: MessageFile) -> Part:
    """The structure of the whole message."""
    part, _ = _part(Scanner(source), [], ("text", "plain"), 0)
    return part


def _part(scanner: Scanner, stack: list[bytes], default: tuple[str, str],
          depth: int) -> tuple[Part, Boundary | None]:
    scanner.parts += 1
    part = Part(start=scanner.pos)
    start_lfs = scanner.lfs
    header = bytearray()
    ended: Boundary | None = None
    while True:
        line_at, lfs_at = scanner.pos, scanner.lfs
        line = scanner.readline()
        if line is None:
            break
        if stack and line.startswith(b"--"):
            found = _delimiter(line, stack)
            if found is not None:             # a boundary inside the header: the part ends
                ended = Boundary(line_at, lfs_at, found[0], found[1])
                scanner.pos, scanner.lfs = line_at + len(line), lfs_at + 1
                part.body, part.header_lfs = line_at, lfs_at - start_lfs
                part.end, part.body_lfs = line_at, 0
                _describe(part, bytes(header), default)
                return part, ended
        if len(header) < MAX_HEADER:
            header += line
        if line in (b"\n", b"\r\n"):
            break
    part.body, part.header_lfs = scanner.pos, scanner.lfs - start_lfs
    body_lfs = scanner.lfs
    _describe(part, bytes(header), default)
    boundary = dict(part.params).get("boundary", "").encode("utf-8", "surrogateescape")
    deep_enough = depth >= MAX_DEPTH or scanner.parts >= MAX_PARTS
    if part.maintype == "multipart" and boundary and not deep_enough:
        inner = stack + [boundary]
        child_default = ("message", "rfc822") if part.subtype == "digest" else ("text", "plain")
        ended = scanner.skip_to(inner)           # the preamble
        while ended is not None and ended.boundary == boundary and not ended.closing:
            child, ended = _part(scanner, inner, child_default, depth + 1)
            part.children.append(child)
        if ended is not None and ended.boundary == boundary:      # the epilogue
            ended = scanner.skip_to(stack)
    elif part.maintype == "message" and part.subtype == "rfc822" and not deep_enough and \
            part.encoding in ("7BIT", "8BIT", "BINARY"):
        part.message, ended = _part(scanner, stack, ("text", "plain"), depth + 1)
        raw = scanner.source.read(part.message.start, part.message.body)
        part.envelope = envelope(raw)
    else:
        ended = scanner.skip_to(stack)
    if ended is None:
        part.end, part.body_lfs = scanner.pos, scanner.lfs - body_lfs
    else:                                        # the LF before a delimiter is the delimiter's
        part.end = max(part.body, ended.offset - 1)
        part.body_lfs = max(0, ended.lfs - 1 - body_lfs)
    return part, ended


def _describe(part: Part, header: bytes, default: tuple[str, str]) -> None:
    """Content type, parameters, encoding and the other MIME fields, from the header."""
    values: dict[bytes, bytes] = {}
    for name, lines in header_fields(header):
        if name.startswith(b"content-") and name not in values:
            values[name] = field_value(lines)
    part.fields = values
    ctype = values.get(b"content-type")
    if ctype is not None:
        parsed = _parameters(ctype)
        maintype, _, subtype = parsed[0][0].partition("/")
        if maintype and subtype and "/" not in subtype:
            part.maintype, part.subtype = maintype.lower(), subtype.lower()
            part.params = parsed[1:]
        else:                                  # RFC 2045 5.2: an invalid type is text/plain
            part.maintype, part.subtype = "text", "plain"
            part.params = [("charset", "us-ascii")]
    else:
        part.maintype, part.subtype = default
        if default == ("text", "plain"):
            part.params = [("charset", "us-ascii")]
    encoding = values.get(b"content-transfer-encoding")
    if encoding:
        part.encoding = encoding.decode("ascii", "replace").strip().upper() or "7BIT"


def _parameters(value: bytes) -> list[tuple[str, str]]:
    """A MIME field's value and parameters, RFC 2231 continuations joined."""
    message = email.message.Message()
    message["x"] = value.decode("utf-8", "surrogateescape")
    params = message.get_params(header="x") or [("", "")]
    out = []
    for key, item in params:
        text = email.utils.collapse_rfc2231_value(item) if isinstance(item, tuple) else item
        out.append((key, text))
    return out


# ---------------------------------------------------------------- BODYSTRUCTURE

def bodystructure(part: Part, extended: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not) of a part, RFC 9051 9 `body`."""
    return b"".join(_body(part, extended, utf8))


def _body(part: Part, extended: bool, utf8: bool) -> Iterator[bytes]:
    yield b"("
    if part.children:
        for child in part.children:
            yield from _body(child, extended, utf8)
        yield b" " + render.string(part.subtype.upper())
        if extended:
            yield b" " + _params(part.params, utf8)
            yield b" " + _extension(part, utf8)
        yield b")"
        return
    if part.maintype == "multipart":          # no boundary or no parts: an empty text part
        yield b'"TEXT" "PLAIN" NIL NIL NIL "7BIT" 0 0)'
        return
    fields = part.fields
    yield b" ".join([render.string(part.maintype.upper()), render.string(part.subtype.upper()),
                     _params(part.params, utf8),
                     render.nstring(fields.get(b"content-id"), utf8),
                     render.nstring(fields.get(b"content-description"), utf8),
                     render.string(part.encoding), str(part.body_size).encode()])
    if part.message is not None:
        yield b" " + part.envelope + b" "
        yield from _body(part.message, extended, utf8)
        yield b" %d" % part.body_lfs
    elif part.maintype == "text":
        yield b" %d" % part.body_lfs
    if extended:
        yield b" " + render.nstring(fields.get(b"content-md5"), utf8)
        yield b" " + _extension(part, utf8)
    yield b")"


def _params(params: list[tuple[str, str]], utf8: bool) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(render.string(key.upper(), utf8) + b" " + render.string(value, utf8)
                            for key, value in params) + b")"


def _extension(part: Part, utf8: bool) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    disposition = part.fields.get(b"content-disposition")
    if disposition:
        parsed = _parameters(disposition)
        dsp = b"(" + render.string(parsed[0][0].upper() or "ATTACHMENT", utf8) + b" " + \
            _params(parsed[1:], utf8) + b")"
    else:
        dsp = b"NIL"
    language = part.fields.get(b"content-language")
    return b" ".join([dsp, render.nstring(language, utf8),
                      render.nstring(part.fields.get(b"content-location"), utf8)])
