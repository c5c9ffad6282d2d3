"""ClamAV's clamd as a check: the message streamed with zINSTREAM over a unix
socket or TCP; clean, a virus named, or clamd's own error."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..config.schema import ChecksSection
from ..core import replies
from .scanner_io import (
    DaemonError,
    Garbled,
    converse,
    pieces,
    printable,
)
from .verdict import CheckResult, Screened

CHECK = "clamd"
MAX_ANSWER = 4096        # one line: `stream: <name> FOUND`
FOUND = re.compile(r"stream: (.+) FOUND")
ERROR_LINE = re.compile(r"(?:stream: )?(.*?) ?ERROR")


@dataclass(frozen=True)
class ClamdAnswer:
    """What clamd said about one message: a virus name, or None for clean."""
    virus: str | None


def scan(message: Path, screened: Screened, checks: ChecksSection, timeout: float) -> CheckResult:
    """Stream the message to clamd; never raises for network trouble.

    The octets go as stored (LF line endings): clamd scans bytes, and its mail
    parser reads either line ending. A message larger than clamd's
    StreamMaxLength gets its `INSTREAM size limit exceeded. ERROR`: an error,
    which [checks] scanner_failure decides about, never a pass."""
    address = checks.clamd
    if address is None:
        raise ValueError("[checks] clamd is not set")
    result = converse(CHECK, address, message, _request, parse_answer, timeout, MAX_ANSWER)
    return result if isinstance(result, CheckResult) else judge(result)


def _request(body: BinaryIO, size: int) -> Iterator[bytes]:
    """zINSTREAM (the z: commands and answers end in NUL): chunks each led by its
    length, 4 octets big-endian, then a chunk of length zero."""
    yield b"zINSTREAM\0"
    for data in pieces(body, size):
        yield struct.pack(">I", len(data)) + data
    yield struct.pack(">I", 0)


def parse_answer(answer: bytes) -> ClamdAnswer:
    """`stream: OK`, `stream: Eicar-Signature FOUND`, or `<why> ERROR` (raised as
    DaemonError); anything else is Garbled."""
    text = answer.rstrip(b"\0\r\n").decode("utf-8", "replace")
    if "\0" in text or "\n" in text:
        raise Garbled(f"more than one answer: {printable(text, 80)!r}")
    if text == "stream: OK":
        return ClamdAnswer(virus=None)
    found = FOUND.fullmatch(text)
    if found:
        return ClamdAnswer(virus=printable(found.group(1), 100))
    error = ERROR_LINE.fullmatch(text)
    if error:
        raise DaemonError(printable(error.group(1)) or "ERROR")
    raise Garbled(printable(text, 80) if text else "an empty answer")


def judge(answer: ClamdAnswer) -> CheckResult:
    if answer.virus is None:
        return CheckResult(check=CHECK, result="clean", reason="no virus found")
    return CheckResult(check=CHECK, result="virus", reason=f"virus found: {answer.virus}",
                       reply=replies.VIRUS_FOUND.fill(virus=answer.virus))
