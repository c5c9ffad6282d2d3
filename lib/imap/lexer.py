"""The IMAP tokens (RFC 9051 9, formal syntax): atoms, quoted strings, literals,
numbers, over a command that arrived as lines and literals.

A command is the list of its line segments (each without its CRLF; every one
but the last ends with a literal's announcement `{n}` or `{n+}`) and the
literals that followed them. The engine collects both as they arrive (it has
read the octets already), so a literal here is an object in `literals`, not
bytes to scan: for APPEND it is the message, streamed to a file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# {n} synchronising, {n+} not (RFC 7888); ~{n} is a literal8 (binary: APPEND only)
LITERAL_ANNOUNCEMENT = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")

_CTL = set(range(0x00, 0x20)) | {0x7F}
_ATOM_SPECIALS = _CTL | set(b'(){ %*"\\]')
ATOM_CHARS = frozenset(set(range(0x01, 0x80)) - _ATOM_SPECIALS)
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | set(b"%*]")
TAG_CHARS = ASTRING_CHARS - {ord("+")}
MAX_NUMBER = 2**63 - 1        # number64 (RFC 9051 9); a plain number is 32 bits


_RUNS: dict[frozenset[int], re.Pattern[bytes]] = {}


def _run_of(allowed: frozenset[int]) -> re.Pattern[bytes]:
    """A compiled `[allowed]+`: the regex engine scans a run in C, where a Python
    loop costs a few hundred ns an octet. The sets are the module's constants."""
    pattern = _RUNS.get(allowed)
    if pattern is None:
        pattern = _RUNS[allowed] = re.compile(
            b"[" + b"".join(re.escape(bytes([octet])) for octet in sorted(allowed)) + b"]+")
    return pattern


class ParseError(Exception):
    """The command is malformed: the client gets a BAD with this text, tagged
    when the tag could be read (`tag`), untagged when not."""

    def __init__(self, message: str, tag: str | None = None):
        super().__init__(message)
        self.tag = tag


def text(value: bytes) -> str:
    """Client bytes as text: UTF-8, with any invalid byte kept (surrogateescape)."""
    return value.decode("utf-8", "surrogateescape")


class Reader:
    """A cursor over one command's segments and literals."""

    def __init__(self, segments: Sequence[bytes], literals: Sequence[object] = ()):
        if len(literals) != len(segments) - 1:
            raise ValueError("every segment but the last is followed by a literal")
        self.segments = segments
        self.literals = literals
        self.index = 0                 # which segment
        self.pos = 0                   # offset in it
        self.line = segments[0]

    # ------------------------------------------------------------ positions

    def peek(self) -> int | None:
        """The next byte of this segment, None at its end."""
        return self.line[self.pos] if self.pos < len(self.line) else None

    def at_end(self) -> bool:
        return self.index == len(self.segments) - 1 and self.pos >= len(self.line)

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def at(self, char: bytes) -> bool:
        return self.line.startswith(char, self.pos)

    def skip(self, char: bytes) -> bool:
        """Consume `char` if it comes next."""
        if self.line.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def expect(self, char: bytes, what: str | None = None) -> None:
        if not self.skip(char):
            raise ParseError(f"Expected {what or repr(char.decode())}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def more(self) -> bool:
        """Consume a space when one comes next: another argument follows."""
        return self.skip(b" ")

    # ------------------------------------------------------------ tokens

    def chars(self, allowed: frozenset[int], what: str) -> bytes:
        """The longest run of `allowed` octets here (at least one)."""
        found = _run_of(allowed).match(self.line, self.pos)
        if found is None:
            raise ParseError(f"Expected {what}")
        self.pos = found.end()
        return found.group()

    def atom(self, what: str = "an atom") -> str:
        return self.chars(ATOM_CHARS, what).decode("ascii")

    def keyword(self, what: str = "a keyword") -> str:
        """An atom, upper-cased (command names, options, search keys)."""
        return self.atom(what).upper()

    def tag(self) -> str:
        return self.chars(TAG_CHARS, "a tag").decode("ascii")

    def number(self, limit: int = 2**32 - 1) -> int:
        digits = self.chars(frozenset(b"0123456789"), "a number")
        value = int(digits)
        if value > limit:
            raise ParseError("Number too big")
        return value

    def nz_number(self) -> int:
        value = self.number()
        if value == 0:
            raise ParseError("Zero is not a valid number here")
        return value

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        while True:
            if self.pos >= len(line):
                raise ParseError("Unterminated quoted string")
            char = line[self.pos]
            self.pos += 1
            if char == 0x22:
                return bytes(out)
            if char == 0x5C:
                if self.pos >= len(line) or line[self.pos] not in b'"\\':
                    raise ParseError("Bad escape in quoted string")
                char = line[self.pos]
                self.pos += 1
            out.append(char)

    def literal(self, binary: bool = False) -> object:
        """The literal whose announcement comes next (it ends this segment);
        a literal8 only where `binary` allows one."""
        match = LITERAL_ANNOUNCEMENT.match(self.line, self.pos)
        if match is None or self.index >= len(self.literals) or (match[1] and not binary):
            raise ParseError("Bad literal")
        value = self.literals[self.index]
        self.index += 1
        self.line = self.segments[self.index]
        self.pos = 0
        return value

    def string_value(self) -> object:
        """A quoted string (bytes) or a literal (whatever the engine stored)."""
        if self.at(b'"'):
            return self.quoted()
        if self.at(b"{"):
            return self.literal()
        raise ParseError("Expected a string")

    def string(self) -> bytes:
        value = self.string_value()
        if not isinstance(value, bytes):
            raise ParseError("Unexpected literal")
        return value

    def astring(self, what: str = "a string") -> bytes:
        if self.at(b'"') or self.at(b"{"):
            return self.string()
        return self.chars(ASTRING_CHARS, what)

    def nstring(self) -> bytes | None:
        if self.line[self.pos:self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        """A LIST pattern: list-chars (with the wildcards % and *) or a string."""
        if self.at(b'"') or self.at(b"{"):
            return self.string()
        return self.chars(LIST_CHARS, "a mailbox pattern")

    def parenthesised(self, item: Callable[[], T]) -> list[T]:
        """`(item *(SP item))` or `()`; `item` parses one element."""
        self.expect(b"(")
        items: list[T] = []
        if self.skip(b")"):
            return items
        while True:
            items.append(item())
            if self.skip(b")"):
                return items
            self.sp()
