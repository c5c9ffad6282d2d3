"""FETCH (RFC 9051 6.4.5, 7.5.2): one `* n FETCH (...)` response per message,
produced lazily as the handler writes them.

Each message's response is built whole in memory unless a body section is
bigger than STREAM_OVER; then that section is read from the file and sent in
chunks behind its literal's length, which the structure (or the file name's
`,W=` size) gives in advance. RFC822.SIZE is the `,W=` size, which is the
number of octets BODY[] sends. ENVELOPE and the MIME structure come from the
shared MessageCache once a message has been read.

A message whose file has gone (another session expunged it) is left out and
the command ends NO [EXPUNGEISSUED] (RFC 2180 4.1.2); its number stays valid
until the EXPUNGE response can be sent.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from dataclasses import dataclass

from ..core.replies import IMAP_DONE, IMAP_EXPUNGE_ISSUED, ImapReply
from ..log.events import EventLog
from ..store.folderindex import FolderIndex
from . import mime, render
from .cache import MessageCache
from .items import BinarySize, BodyItem, FetchItem, Section
from .message import MessageFile, envelope, open_stored, select_fields, to_wire, wire_size
from .selected import Selected

STREAM_OVER = 256 * 1024      # body sections above this are streamed from the file
BATCH = 64 * 1024             # small responses are handed over in batches of this
FLAG_LINES_BATCH = 2048       # UID/FLAGS responses handed over together


class Gone(Exception):
    """The message's file is no longer there."""


@dataclass
class Streamed:
    """A section too big to build in memory: its wire size and where it is."""
    size: int
    start: int
    end: int
    skip: int = 0             # partial fetch: octets of the wire form to leave out first


class Fetcher:
    def __init__(self, view: Selected, cache: MessageCache, log: EventLog, utf8: bool):
        self.view = view
        self.index: FolderIndex = view.index
        self.cache = cache
        self.log = log
        self.utf8 = utf8

    def responses(self, positions: list[int], items: tuple[FetchItem, ...], tag: str,
                  name: str, changed: set[int]) -> Iterator[bytes]:
        """Every response, then the tagged completion; `changed` are positions
        whose \\Seen flag this FETCH set (their FLAGS are sent too)."""
        if all(item in ("UID", "FLAGS") for item in items):
            yield from self._flags_only(positions, items, tag, name, changed)
            return
        missing = 0
        pending: list[bytes] = []
        size = 0
        for position in positions:
            try:
                pieces, state = self._message(position, items, position in changed)
            except Gone:
                missing += 1
                continue
            try:
                for piece in pieces:
                    if isinstance(piece, bytes):
                        pending.append(piece)
                        size += len(piece)
                        continue
                    yield b"".join(pending)
                    pending, size = [], 0
                    yield from self._stream(state, position, piece)
            finally:
                state.close()
            if size >= BATCH:
                yield b"".join(pending)
                pending, size = [], 0
        reply: ImapReply = IMAP_EXPUNGE_ISSUED if missing else IMAP_DONE.fill(command=name)
        pending.append(reply.tagged(tag).to_bytes())
        yield b"".join(pending)

    def _flags_only(self, positions: list[int], items: tuple[FetchItem, ...], tag: str,
                    name: str, changed: set[int]) -> Iterator[bytes]:
        """UID and FLAGS only (how clients resynchronise a whole folder): no file
        is opened, so each response is formatted straight from the snapshot."""
        view = self.view
        uids, masks, recent = view.uids, view.flags, view.recent
        plain, marked = render.FLAG_LISTS, render.RECENT_FLAG_LISTS
        if items == ("UID", "FLAGS") and not changed:        # UID FETCH 1:* (FLAGS): the usual
            for start in range(0, len(positions), FLAG_LINES_BATCH):
                yield b"".join([
                    b"* %d FETCH (UID %d FLAGS %s)\r\n" % (
                        position + 1, uids[position],
                        (marked if uids[position] in recent else plain)[masks[position] & 31])
                    for position in positions[start:start + FLAG_LINES_BATCH]])
            yield IMAP_DONE.fill(command=name).tagged(tag).to_bytes()
            return
        pending: list[bytes] = []
        for position in positions:
            uid = uids[position]
            flags = b"FLAGS " + render.flags(masks[position], uid in recent)
            fields = [b"UID %d" % uid if item == "UID" else flags for item in items]
            if position in changed and "FLAGS" not in items:
                fields.append(flags)
            pending.append(b"* %d FETCH (%s)\r\n" % (position + 1, b" ".join(fields)))
            if len(pending) >= FLAG_LINES_BATCH:
                yield b"".join(pending)
                pending = []
        pending.append(IMAP_DONE.fill(command=name).tagged(tag).to_bytes())
        yield b"".join(pending)

    # ------------------------------------------------------------ one message

    def _message(self, position: int, items: tuple[FetchItem, ...],
                 seen_changed: bool) -> tuple[list[bytes | Streamed], _Open]:
        view = self.view
        uid = view.uids[position]
        if uid in view.vanished and any(item not in ("UID", "FLAGS") for item in items):
            raise Gone()
        out: list[bytes | Streamed] = [b"* %d FETCH (" % (position + 1)]
        state = _Open(self, uid)
        try:
            for number, item in enumerate(items):
                if number:
                    out.append(b" ")
                out += self._item(uid, position, item, state)
            if seen_changed and "FLAGS" not in items:
                out.append(b" FLAGS " + render.flags(view.flags[position], uid in view.recent))
        except FileNotFoundError:
            state.close()
            raise Gone() from None
        except BaseException:
            state.close()
            raise
        out.append(b")\r\n")
        return out, state

    def _item(self, uid: int, position: int, item: FetchItem, state: _Open) -> list:
        view = self.view
        if item == "FLAGS":
            return [b"FLAGS " + render.flags(view.flags[position], uid in view.recent)]
        if item == "UID":
            return [b"UID %d" % uid]
        if item == "RFC822.SIZE":
            return [b"RFC822.SIZE %d" % self.index.size(uid)]
        if item == "INTERNALDATE":
            return [b"INTERNALDATE " + render.date_time(self.index.internal_date(uid))]
        if item == "ENVELOPE":
            return [b"ENVELOPE " + self._envelope(uid, state)]
        if item in ("BODYSTRUCTURE", "BODY"):
            part = self._structure(uid, state)
            extended = item == "BODYSTRUCTURE"
            return [item.encode() + b" " + mime.bodystructure(part, extended, self.utf8)]
        if item == "RFC822":
            return self._section(b"RFC822", BodyItem(Section()), uid, state)
        if item == "RFC822.HEADER":
            return self._section(b"RFC822.HEADER", BodyItem(Section(text="HEADER")), uid, state)
        if item == "RFC822.TEXT":
            return self._section(b"RFC822.TEXT", BodyItem(Section(text="TEXT")), uid, state)
        if isinstance(item, BinarySize):
            data = self._binary(uid, item.part, state)
            return [b"BINARY.SIZE[%s] %d" % (_part_name(item.part), len(data))]
        if isinstance(item, BodyItem):
            return self._section(_item_name(item), item, uid, state)
        raise ValueError(f"unknown fetch item {item!r}")

    def _envelope(self, uid: int, state: _Open) -> bytes:
        kind = "envelope-utf8" if self.utf8 else "envelope"
        cached = self.cache.get(kind, state.name)
        if isinstance(cached, bytes):
            return cached
        source = state.file()
        value = envelope(source.read(0, source.header_end()), self.utf8)
        self.cache.put(kind, state.name, value, len(value))
        return value

    def _structure(self, uid: int, state: _Open) -> mime.Part:
        cached = self.cache.get("structure", state.name)
        if isinstance(cached, mime.Part):
            return cached
        part = mime.parse(state.file())
        self.cache.put("structure", state.name, part, _cost(part))
        return part

    # ------------------------------------------------------------ sections

    def _section(self, label: bytes, item: BodyItem, uid: int, state: _Open) -> list:
        """`label` then the section's octets (a literal), or NIL when there is no such part."""
        if item.binary:
            data = self._binary(uid, item.section.part, state)
            if item.partial:
                start, length = item.partial
                data = data[start:start + length]
            marker = b"~" if b"\0" in data else b""
            return [label + b" " + marker + render.literal(data)]
        section = item.section
        found = self._range(uid, section, state)
        if found is None:
            return [label + b" NIL"]
        start, end, size, fields = found
        source = state.file()
        if fields is not None:
            data = to_wire(select_fields(source.read(start, end), section.fields,
                                         section.text == "HEADER.FIELDS"))
            if item.partial is not None:
                label += b"<%d>" % item.partial[0]
            return [label + b" " + render.literal(_partial(data, item.partial))]
        skip = 0
        if item.partial is not None:
            skip, length = item.partial
            size = max(0, min(length, size - skip))
            label += b"<%d>" % skip
        if size > STREAM_OVER:
            return [label + b" {%d}\r\n" % size, Streamed(size, start, end, skip)]
        data = to_wire(source.read(start, end))
        if item.partial is not None:
            data = data[skip:skip + size]
        return [label + b" " + render.literal(data)]

    def _range(self, uid: int, section: Section,
               state: _Open) -> tuple[int, int, int, bool | None] | None:
        """(start, end, wire size, header-fields?) of a section in stored form.
        The whole message, its header and its text need no MIME parsing."""
        if not section.part and section.text != "MIME":
            source = state.file()
            if section.text == "":
                return 0, source.size, self.index.size(uid), None
            end = source.header_end()
            header_size = wire_size(source.read(0, end))
            if section.text == "TEXT":
                return end, source.size, self.index.size(uid) - header_size, None
            return 0, end, header_size, (True if section.text != "HEADER" else None)
        root = self._structure(uid, state)
        node = root.find(section.part) if section.part else root
        if node is None:
            return None
        text = section.text
        if text == "MIME":
            return node.start, node.body, node.header_size, None
        if text == "":
            if not section.part:
                return root.start, root.end, root.header_size + root.body_size, None
            return node.body, node.end, node.body_size, None
        if section.part:                    # HEADER / TEXT of a message/rfc822 part
            if node.message is None:
                return None
            node = node.message
        if text == "TEXT":
            return node.body, node.end, node.body_size, None
        return node.start, node.body, node.header_size, (True if text != "HEADER" else None)

    def _binary(self, uid: int, numbers: tuple[int, ...], state: _Open) -> bytes:
        """BINARY: a part's content with its transfer encoding undone (RFC 3516)."""
        root = self._structure(uid, state)
        node = root.find(numbers) if numbers else root
        if node is None:
            return b""
        raw = state.file().read(node.body, node.end)
        encoding = node.encoding
        if encoding == "BASE64":
            try:
                return binascii.a2b_base64(raw)
            except binascii.Error:
                return b""
        if encoding == "QUOTED-PRINTABLE":
            return binascii.a2b_qp(to_wire(raw))
        return to_wire(raw)

    def _stream(self, state: _Open, position: int, piece: Streamed) -> Iterator[bytes]:
        """A big section, chunk by chunk in wire form."""
        left, skip = piece.size, piece.skip
        for chunk in state.file().chunks(piece.start, piece.end):
            data = to_wire(chunk)
            if skip:
                if skip >= len(data):
                    skip -= len(data)
                    continue
                data, skip = data[skip:], 0
            if len(data) >= left:
                yield data[:left]
                left = 0
                break
            yield data
            left -= len(data)
        if left:                  # the file shrank after its size was read: keep the framing
            self.log.warning("message_shrank", uid=self.view.uids[position], missing=left)
            yield b" " * left


class _Open:
    """The file of the message being answered, opened once when first needed."""

    def __init__(self, fetcher: Fetcher, uid: int):
        self.index = fetcher.index
        self.uid = uid
        self._name: str | None = None
        self._file: MessageFile | None = None

    @property
    def name(self) -> str:
        """The unique part of the file's name (the cache key)."""
        if self._name is None:
            entry = self.index.name_of(self.uid)
            if entry is None:
                raise FileNotFoundError(f"message {self.uid} is gone")
            self._name = entry[1].partition(":")[0]
        return self._name

    def file(self) -> MessageFile:
        if self._file is None:
            self._file = open_stored(self.index, self.uid)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    return data[partial[0]:partial[0] + partial[1]]


def _part_name(part: tuple[int, ...]) -> bytes:
    return ".".join(str(n) for n in part).encode()


def _item_name(item: BodyItem) -> bytes:
    """How the response names a section: BODY[1.HEADER.FIELDS (FROM)] (PEEK dropped)."""
    section = item.section
    spec = _part_name(section.part)
    if section.text:
        spec += (b"." if spec else b"") + section.text.encode()
    if section.fields:
        spec += b" (" + " ".join(section.fields).encode("utf-8", "surrogateescape") + b")"
    return (b"BINARY[" if item.binary else b"BODY[") + spec + b"]"


def _cost(part: mime.Part) -> int:
    """About how many bytes a structure holds."""
    total = 400 + len(part.envelope) + sum(len(v) for v in part.fields.values())
    for child in part.children:
        total += _cost(child)
    if part.message is not None:
        total += _cost(part.message)
    return total
