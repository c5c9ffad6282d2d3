"""How one IMAP command arrives: lines and the literals between them.

A line that ends in `{n}` (or `{n+}`, `~{n}`) announces n octets that
follow it, after which the command goes on with another line. The framer
keeps the lines and puts each literal's octets into a sink: memory for a
string (bounded by MAX_LITERAL and MAX_COMMAND), a temporary file in the
target folder for an APPEND's message (bounded by max_message_size), or
nowhere when the command has already been refused (a non-synchronising
literal must still be read, RFC 7888). Its octets are always consumed, so
a refused command never leaves bytes behind that would be taken as commands.
"""

from __future__ import annotations

import os

from ..core import wire
from ..core.replies import IMAP_TEMPORARY, ImapReply
from ..store.maildir import TempMessage
from .lexer import TAG_CHARS

MAX_LITERAL = 64 * 1024        # a string literal (a password, a search string)
MAX_COMMAND = 1024 * 1024      # one command's lines and string literals together


class Sink:
    """Where a literal's octets go."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def value(self) -> object:
        raise NotImplementedError

    def discard(self) -> None:
        """Drop what was written (a refused or failed command)."""


class MemorySink(Sink):
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def value(self) -> bytes:
        return bytes(self.data)


class NullSink(Sink):
    def write(self, data: bytes) -> None:
        pass

    def value(self) -> bytes:
        return b""


class MessageSink(Sink):
    """An APPEND's message, written to the target folder's tmp/ as it arrives,
    in stored form (CRLF -> LF)."""

    def __init__(self, folder: str, base: str):
        self.folder = folder
        self.temp = TempMessage(os.path.join(folder, "tmp", base), base)
        self._converter = wire.LfConverter()

    def write(self, data: bytes) -> None:
        self.temp.write(self._converter.feed(data))

    def value(self) -> MessageSink:
        self.temp.write(self._converter.flush())
        return self

    def discard(self) -> None:
        self.temp.discard()


class Framer:
    """One command's segments (lines without CRLF) and literals, as they come."""

    def __init__(self) -> None:
        self.segments: list[bytes] = []
        self.literals: list[object] = []
        self.size = 0                     # octets of lines and string literals so far
        self.remaining = 0                # literal octets still to come
        self.sink: Sink | None = None
        self.refusal: ImapReply | None = None   # the command is refused: read, then answer

    @property
    def tag(self) -> str | None:
        """The tag of the command being collected, if its first line has a valid one."""
        if not self.segments:
            return None
        first = self.segments[0]
        end = first.find(b" ")
        tag = first[:end] if end > 0 else b""
        return tag.decode("ascii") if tag and all(c in TAG_CHARS for c in tag) else None

    def add_line(self, line: bytes) -> None:
        self.segments.append(line)
        self.size += len(line)

    def expect(self, octets: int, sink: Sink) -> None:
        self.remaining = octets
        self.sink = sink
        if octets == 0:
            self._finish()

    def feed(self, chunk: bytes) -> bytes:
        """Take literal octets from `chunk`; return what is left over."""
        take = min(self.remaining, len(chunk))
        sink = self.sink
        if sink is not None and take:
            try:
                sink.write(chunk[:take])
            except OSError:               # the disk is full, say: read on, then refuse
                sink.discard()
                self.sink = NullSink()
                self.refusal = self.refusal or IMAP_TEMPORARY
        self.remaining -= take
        if self.remaining == 0 and self.sink is not None:
            self._finish()
        return chunk[take:]

    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            if isinstance(sink, MemorySink):
                self.size += len(sink.data)
            self.literals.append(sink.value())

    def take(self) -> tuple[list[bytes], list[object], ImapReply | None]:
        """The complete command; the framer is empty again."""
        taken = self.segments, self.literals, self.refusal
        self.segments, self.literals, self.size, self.refusal = [], [], 0, None
        return taken

    def drop(self) -> None:
        """Forget the command; remove any message file it wrote."""
        for literal in self.literals:
            if isinstance(literal, Sink):
                literal.discard()
        if self.sink is not None:
            self.sink.discard()
        self.segments, self.literals, self.size, self.refusal = [], [], 0, None
        self.remaining, self.sink = 0, None
