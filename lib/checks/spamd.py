"""SpamAssassin's spamd as a check: the SPAMC/1.5 SYMBOLS request over TCP, its
score, threshold and rules, judged against [checks] spam_reject_score."""

from __future__ import annotations

import re
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
    spam_status,
)
from .verdict import CheckResult, Screened

CHECK = "spamd"
MAX_ANSWER = 64 * 1024      # SYMBOLS answers a few header lines and one line of rule names

# `Spam: True ; 15.0 / 5.0` (the PROTOCOL document also allows Yes/No)
SPAM_HEADER = re.compile(r"(True|False|Yes|No)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)",
                         re.IGNORECASE)
STATUS_LINE = re.compile(r"SPAMD/(\d+\.\d+)\s+(\d+)\s*(.*)")
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


@dataclass(frozen=True)
class SpamdAnswer:
    """What spamd said about one message."""
    spam: bool                   # spamd's own verdict: score at or above its threshold
    score: float
    threshold: float             # spamd's required_score
    rules: tuple[str, ...]       # the rules that hit, as spamd lists them


def scan(message: Path, screened: Screened, checks: ChecksSection, timeout: float) -> CheckResult:
    """Ask spamd about the message; never raises for network trouble.

    The message goes as stored, LF line endings and all, with Content-length
    its size on disk: that is what spamc sends from a local file, and
    SpamAssassin reads either line ending. spamd learns nothing of the
    envelope (SPAMC has no place for it); it reads the Received: headers.
    """
    address = checks.spamd
    if address is None:
        raise ValueError("[checks] spamd is not set")
    result = converse(CHECK, address, message, _request, parse_answer, timeout, MAX_ANSWER)
    return result if isinstance(result, CheckResult) else judge(result, checks.spam_reject_score)


def _request(body: BinaryIO, size: int) -> Iterator[bytes]:
    yield f"SYMBOLS SPAMC/1.5\r\nContent-length: {size}\r\n\r\n".encode("ascii")
    yield from pieces(body, size)


def parse_answer(answer: bytes) -> SpamdAnswer:
    """spamd's answer to SYMBOLS: a status line, headers (Spam: is the verdict),
    a blank line, the rule names separated by commas. Raises Garbled or
    DaemonError (a status other than 0 EX_OK)."""
    head, body = _split_head(answer)
    lines = head.decode("latin-1").splitlines()
    if not lines:
        raise Garbled("an empty answer")
    status = STATUS_LINE.fullmatch(lines[0].strip())
    if not status:
        raise Garbled(f"status line {printable(lines[0], 80)!r}")
    if status.group(2) != "0":
        raise DaemonError(printable(f"{status.group(2)} {status.group(3)}".strip()))
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise Garbled(f"header line {printable(line, 80)!r}")
        headers[name.strip().lower()] = value.strip()
    if "spam" not in headers:
        raise Garbled("no Spam: header")
    verdict = SPAM_HEADER.fullmatch(headers["spam"])
    if not verdict:
        raise Garbled(f"Spam: {printable(headers['spam'], 80)!r}")
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise Garbled(f"Content-length: {printable(headers['content-length'], 40)!r}") \
                from None
        if len(body) < length:
            raise Garbled(f"answer cut short ({len(body)} of {length} octets)")
        body = body[:length]
    names = body.decode("latin-1").replace("\r", "").replace("\n", ",").split(",")
    return SpamdAnswer(
        spam=verdict.group(1).lower() in ("true", "yes"),
        score=float(verdict.group(2)),
        threshold=float(verdict.group(3)),
        rules=tuple(name.strip() for name in names if RULE_NAME.fullmatch(name.strip())),
    )


def _split_head(answer: bytes) -> tuple[bytes, bytes]:
    """Headers and body, at the first blank line (spamd sends CRLF; LF is accepted)."""
    crlf, lf = answer.find(b"\r\n\r\n"), answer.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return answer[:crlf], answer[crlf + 4:]
    if lf >= 0:
        return answer[:lf], answer[lf + 2:]
    raise Garbled("no end of the headers" if answer else "an empty answer")


def judge(answer: SpamdAnswer, reject_score: float) -> CheckResult:
    """At or above spam_reject_score: refused. At or above spamd's own threshold:
    tagged and filed as junk. Otherwise ham, with the score recorded."""
    score = f"score {answer.score:.1f}"
    rules = ",".join(answer.rules) or "none"
    if answer.score >= reject_score:
        return CheckResult(check=CHECK, result="spam", reply=replies.SPAM_REJECTED,
                           reason=f"{score} >= spam_reject_score {reject_score:g} ({rules})")
    if answer.spam:
        return CheckResult(check=CHECK, result="spam", junk=True,
                           reason=f"{score} >= spamd's threshold {answer.threshold:.1f} ({rules})",
                           headers=(("X-Spam-Flag", "YES"), ("X-Spam-Status", status(answer))))
    return CheckResult(check=CHECK, result="ham",
                       reason=f"{score} < spamd's threshold {answer.threshold:.1f} ({rules})",
                       headers=(("X-Spam-Status", status(answer)),))


def status(answer: SpamdAnswer) -> str:
    """The X-Spam-Status value: `Yes, score=15.0 required=5.0 tests=GTUBE,NO_RELAYS`."""
    return spam_status(answer.spam, f"{answer.score:.1f}", f"{answer.threshold:.1f}",
                       answer.rules)
