"""The Authentication-Results header (RFC 8601): the one we add to a stranger's
message, built from the clauses of the checks that ran, with [server]
hostname as authserv-id; and the removal of every such header in the message
that claims to be ours (RFC 8601 5: a forged one must not reach the reader),
keeping those of other hosts."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .verdict import CheckResult

FIELD = "Authentication-Results"
FOLD = "\r\n\t"             # each result on a line of its own


def clauses(results: Iterable[CheckResult]) -> list[str]:
    """The resinfo clauses of the checks that gave one ("spf=pass smtp.mailfrom=..."),
    in order; a check's `auth` may hold several, separated by ";"."""
    found: list[str] = []
    for result in results:
        if result.auth:
            found += [_one_line(c) for c in _split(result.auth, ";") if c.strip()]
    return found


def header_value(authserv_id: str, results: Iterable[CheckResult]) -> str:
    """The field's value, folded: "<authserv-id>;<FOLD>spf=...;<FOLD>dkim=..."
    or "<authserv-id>; none" when no check gave a result (RFC 8601 2.2)."""
    found = clauses(results)
    if not found:
        return f"{authserv_id}; none"
    return f"{authserv_id};{FOLD}" + f";{FOLD}".join(found)


def header_field(authserv_id: str, results: Iterable[CheckResult]) -> bytes:
    """The whole header field, ending in CRLF, ready to prepend to a message."""
    return f"{FIELD}: {header_value(authserv_id, results)}\r\n".encode()


def authserv_id(value: str) -> str | None:
    """The authserv-id a field's value starts with (after comments and folding
    white space; a quoted-string unquoted), or None when there is none."""
    position = _skip_cfws(value, 0)
    if position >= len(value):
        return None
    if value[position] == '"':
        text, _ = _quoted(value, position)
        return text or None
    match = re.compile(r'[^\s;()"]+').match(value, position)
    return match.group() if match else None


def is_ours(value: str, our_id: str) -> bool:
    found = authserv_id(value)
    return found is not None and _same_host(found, our_id)


def remove_ours(message: bytes, our_id: str) -> bytes:
    """The message without any Authentication-Results field whose authserv-id is
    `our_id` (case-insensitive, a trailing dot ignored); the other fields, their
    order, folding and line endings, and the body are kept byte for byte."""
    if FIELD.lower().encode() not in message.lower():
        return message                       # the usual case: none at all, nothing to parse
    header, body = _split_header(message)
    kept: list[bytes] = []
    for field in _fields(header):
        name, colon, value = field.partition(b":")
        if (colon and name.rstrip(b" \t").lower() == FIELD.lower().encode()
                and is_ours(value.decode("utf-8", "replace"), our_id)):
            continue
        kept.append(field)
    return b"".join(kept) + body


# ---------------------------------------------------------------- header bytes

def _split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """(the header's lines with their endings, the rest from the empty line on)."""
    lines: list[bytes] = []
    position = 0
    while position < len(message):
        end = message.find(b"\n", position)
        line = message[position:] if end < 0 else message[position:end + 1]
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line)
        position += len(line)
    return lines, message[position:]


def _fields(lines: list[bytes]) -> list[bytes]:
    """Lines joined into fields: a line that starts with white space continues
    the field above it (RFC 5322 2.2.3)."""
    fields: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


# ---------------------------------------------------------------- RFC 5322 lexing

def _skip_cfws(text: str, position: int) -> int:
    """The position after any white space (folding included) and comments."""
    while position < len(text):
        if text[position].isspace():
            position += 1
        elif text[position] == "(":
            position = _comment_end(text, position)
        else:
            break
    return position


def _comment_end(text: str, position: int) -> int:
    """The position after the (nested) comment that starts at `position`."""
    depth = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        position += 1
        if depth == 0:
            break
    return position


def _quoted(text: str, position: int) -> tuple[str, int]:
    """(the content of the quoted-string at `position`, the position after it)."""
    content = []
    position += 1
    while position < len(text) and text[position] != '"':
        if text[position] == "\\" and position + 1 < len(text):
            position += 1
        content.append(text[position])
        position += 1
    return "".join(content), position + 1


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator`, except inside comments and quoted-strings."""
    if "(" not in text and '"' not in text:
        return text.split(separator)
    parts, start, position = [], 0, 0
    while position < len(text):
        char = text[position]
        if char == "(":
            position = _comment_end(text, position)
        elif char == '"':
            position = _quoted(text, position)[1]
        elif char == separator:
            parts.append(text[start:position])
            position += 1
            start = position
        else:
            position += 1
    parts.append(text[start:])
    return parts


def _one_line(clause: str) -> str:
    """A clause with its white space (and any CR, LF) made single spaces."""
    if clause.isprintable():
        return " ".join(clause.split())
    return " ".join("".join(c if c.isprintable() else " " for c in clause).split())


def _same_host(a: str, b: str) -> bool:
    return a.lower().rstrip(".") == b.lower().rstrip(".")
