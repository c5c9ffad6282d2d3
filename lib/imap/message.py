"""A stored message as IMAP reads it: its octets by offset, its header
fields, and ENVELOPE (RFC 9051 7.5.2).

Offsets are those of the stored form: LF line endings, a final LF (see
store/maildir). A file another program wrote (no `,W=` size in its name) is
read once and brought to that form (CRLF -> LF, a final LF added), so POP3
and IMAP count the same octets. What a client receives is the stored form
with every LF sent as CRLF: a range's size on the wire is its length plus
its LFs.
"""

from __future__ import annotations

import email.utils
import errno
import functools
import os
import re
from collections.abc import Iterator

from ..store.folderindex import FolderIndex
from ..store.maildir import size_field
from . import render

READ_CHUNK = 256 * 1024
HEADER_PROBE = 16 * 1024          # first read for a header; most fit
MAX_HEADER = 1024 * 1024          # a header longer than this is cut (for parsing only)
ADDRESS_CACHE = 4096              # address lists remembered, rendered ...
CACHED_ADDRESS_LIST = 512         # ... when this short (so at most a few MB)
ENVELOPE_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
                   b"in-reply-to", b"message-id")


def open_stored(index: FolderIndex, uid: int) -> MessageFile:
    """The message's file: one of ours (,W= in its name: stored form already,
    its size in ,S=) or another program's; FileNotFoundError once it is gone."""
    entry = index.name_of(uid)
    if entry is None:
        raise FileNotFoundError(errno.ENOENT, f"message {uid} is gone")
    unique = entry[1].partition(":")[0]
    own = size_field(unique, ",W=") is not None
    return MessageFile(index.open(uid), own, size_field(unique, ",S=") if own else None)


class MessageFile:
    """One message's octets in stored form, read by offset (never whole unless small)."""

    def __init__(self, fd: int, own: bool, size: int | None = None):
        """`own`: a file we wrote (stored form already); its `size` when the
        name gives it (,S=), which saves asking the file."""
        self._fd = fd
        self.data: bytes | None = None
        if own:
            self.size = os.fstat(fd).st_size if size is None else size
            return
        try:                          # another program's file: normalise it once
            chunks = []
            while chunk := os.read(fd, READ_CHUNK):
                chunks.append(chunk)
        finally:
            os.close(fd)
            self._fd = -1
        data = b"".join(chunks).replace(b"\r\n", b"\n")
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self.data = data
        self.size = len(data)

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        if self.data is not None:
            return self.data[start:end]
        pieces = []
        while start < end:
            piece = os.pread(self._fd, min(end - start, READ_CHUNK * 4), start)
            if not piece:
                break                 # the file shrank under us: send what there is
            pieces.append(piece)
            start += len(piece)
        return b"".join(pieces)

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        while start < end:
            piece = self.read(start, min(end, start + READ_CHUNK))
            if not piece:
                return
            yield piece
            start += len(piece)

    def header_end(self) -> int:
        """The offset just after the blank line that ends the top header."""
        probe = self.read(0, HEADER_PROBE)
        if probe.startswith(b"\n"):
            return 1
        at = probe.find(b"\n\n")
        while at < 0 and len(probe) < min(self.size, MAX_HEADER):
            probe = self.read(0, len(probe) * 4)
            at = probe.find(b"\n\n")
        return at + 2 if at >= 0 else len(probe)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MessageFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wire_size(data: bytes) -> int:
    """Octets of stored-form bytes once every LF is sent as CRLF."""
    return len(data) + data.count(b"\n")


def to_wire(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


# ---------------------------------------------------------------- header fields

def header_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, the field's raw lines) for each field of a header, in
    order; a line that starts with white space continues the field before it."""
    fields: list[tuple[bytes, bytes]] = []
    for line in raw.splitlines(keepends=True):
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, lines = fields[-1]
            fields[-1] = (name, lines + line)
            continue
        name, colon, _ = line.partition(b":")
        fields.append((name.strip().lower() if colon else b"", line))
    return fields


def field_value(lines: bytes) -> bytes:
    """The unfolded value of a field (after the colon, ends stripped)."""
    value = lines.partition(b":")[2]
    return b" ".join(value.split(b"\n")).replace(b"\r", b"").strip()


def first_values(raw: bytes, names: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The first value of each wanted field."""
    found: dict[bytes, bytes] = {}
    for name, lines in header_fields(raw):
        if name in names and name not in found:
            found[name] = field_value(lines)
    return found


def select_fields(raw: bytes, names: tuple[str, ...], keep: bool) -> bytes:
    """HEADER.FIELDS (keep=True) or HEADER.FIELDS.NOT: the chosen fields'
    lines and the blank line that ends a header."""
    wanted = {name.lower().encode("utf-8", "surrogateescape") for name in names}
    chosen = [lines for name, lines in header_fields(raw) if (name in wanted) == keep]
    return b"".join(chosen) + b"\n"


# ---------------------------------------------------------------- ENVELOPE

def envelope(raw_header: bytes, utf8: bool = False) -> bytes:
    """ENVELOPE: date, subject, from, sender, reply-to, to, cc, bcc,
    in-reply-to, message-id (sender and reply-to default to from)."""
    values = first_values(raw_header, ENVELOPE_FIELDS)
    sender_from = addresses(values.get(b"from"), utf8)

    def address_field(name: bytes) -> bytes:
        return addresses(values.get(name), utf8)

    parts = [render.nstring(values.get(b"date"), utf8),
             render.nstring(values.get(b"subject"), utf8),
             sender_from,
             address_field(b"sender") if values.get(b"sender") else sender_from,
             address_field(b"reply-to") if values.get(b"reply-to") else sender_from,
             address_field(b"to"), address_field(b"cc"), address_field(b"bcc"),
             render.nstring(values.get(b"in-reply-to"), utf8),
             render.nstring(values.get(b"message-id"), utf8)]
    return b"(" + b" ".join(parts) + b")"


def addresses(value: bytes | None, utf8: bool) -> bytes:
    """An address list: ((name adl mailbox host) ...) with RFC 9051's group
    markers (NIL NIL group NIL) ... (NIL NIL NIL NIL); NIL when empty.
    Short ones are remembered: the same correspondents write again and again."""
    if value is not None and len(value) <= CACHED_ADDRESS_LIST:
        return _remembered_addresses(value, utf8)
    return _addresses(value, utf8)


def _addresses(value: bytes | None, utf8: bool) -> bytes:
    if not value:
        return b"NIL"
    out: list[bytes] = []
    text = value.decode("utf-8", "surrogateescape")
    pieces = (("address", piece) for piece in text.split(",")) if _PLAIN_LIST.match(text) \
        else _split_addresses(text)
    for kind, piece in pieces:
        if kind == "group":
            out.append(b"(NIL NIL " + render.string(piece, utf8) + b" NIL)")
        elif kind == "end":
            out.append(b"(NIL NIL NIL NIL)")
        else:
            simple = _SIMPLE_ADDRESS.match(piece)
            if simple is not None:            # the usual forms, without the slow parser
                if simple["quoted"] is not None:
                    name = re.sub(r"\\(.)", r"\1", simple["quoted"])
                else:
                    name = " ".join((simple["name"] or "").split())
                address = simple["address"] or simple["bare"]
            else:
                name, address = email.utils.parseaddr(piece)
            if not address:
                continue
            mailbox, at, host = address.rpartition("@")
            if not at:
                mailbox, host = address, ""
            out.append(b"(" + (render.string(name, utf8) if name else b"NIL") + b" NIL " +
                       render.string(mailbox, utf8) + b" " + render.string(host, utf8) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


_remembered_addresses = functools.lru_cache(maxsize=ADDRESS_CACHE)(_addresses)

# A list with nothing that needs a real parser: no quotes, comments, groups, escapes.
_PLAIN_LIST = re.compile(r'[^"():;\\]*\Z')
_ATOMS = r'[^<>@\s"(),;:\\\[\]]+'
_SIMPLE_ADDRESS = re.compile(
    rf'\s*(?:(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<name>[^"<>@,;:()\\]*?))\s*'
    rf'<(?P<address>{_ATOMS}@{_ATOMS})>|(?P<bare>{_ATOMS}@{_ATOMS}))\s*\Z')


def _split_addresses(value: str) -> Iterator[tuple[str, str]]:
    """("address", text), ("group", name) and ("end", "") in order: commas,
    colons and semicolons that are not inside quotes, <>, or comments."""
    piece: list[str] = []
    quoted = False
    angle = comment = 0
    in_group = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == "(":
            comment += 1
        elif char == ")" and comment:
            comment -= 1
        elif comment:
            pass
        elif char == "<":
            angle += 1
        elif char == ">" and angle:
            angle -= 1
        elif angle:
            pass
        elif char == ":" and not in_group:
            yield "group", "".join(piece).strip().strip('"')
            piece, in_group = [], True
            continue
        elif char in ",;":
            text = "".join(piece).strip()
            if text:
                yield "address", text
            piece = []
            if char == ";" and in_group:
                yield "end", ""
                in_group = False
            continue
        piece.append(char)
    text = "".join(piece).strip()
    if text:
        yield "address", text
    if in_group:
        yield "end", ""
