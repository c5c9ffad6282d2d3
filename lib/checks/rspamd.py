"""rspamd as a check: POST /checkv2 to its normal worker with the envelope in
request headers; the action it answers decides."""

from __future__ import annotations

import email.charset
import http.client
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import ChecksSection
from ..core import replies
from .scanner_io import (
    CHUNK,
    DaemonError,
    Deadline,
    Garbled,
    failure,
    message_size,
    pieces,
    printable,
    spam_status,
)
from .verdict import CheckResult, Screened

CHECK = "rspamd"
MAX_ANSWER = 1024 * 1024     # the JSON lists every symbol with its options: room for many

# What each action of rspamd's means here (DESIGN 7.1). rspamd 3.4 also knows
# `discard` (accept and drop) and `quarantine`: refusing beats losing a message,
# and the Junk folder is our quarantine.
REFUSED = frozenset({"reject", "discard"})
DEFERRED = frozenset({"soft reject", "greylist"})
TAGGED = frozenset({"add header", "rewrite subject", "quarantine"})
PASSED = frozenset({"no action"})

# A header in CheckResult.headers named Subject *replaces* the message's Subject:
# it is how `rewrite subject` hands on the subject rspamd wrote.
SUBJECT = "Subject"


@dataclass(frozen=True)
class RspamdAnswer:
    """What rspamd said about one message."""
    action: str                  # reject, soft reject, greylist, add header, ...
    score: float
    required: float              # rspamd's required_score (its reject threshold)
    symbols: tuple[str, ...]     # the symbols that hit
    subject: str | None          # with `rewrite subject`: the new Subject
    message: str | None          # its smtp_message, for the log


def scan(message: Path, screened: Screened, checks: ChecksSection, timeout: float) -> CheckResult:
    """Ask rspamd about the message; never raises for network trouble.

    The message goes as stored (LF line endings: rspamd parses either) with
    a Content-Length, streamed from the file; the envelope goes in rspamd's
    request headers (see request_headers)."""
    if not checks.rspamd:
        raise ValueError("[checks] rspamd is not set")
    url = urllib.parse.urlsplit(checks.rspamd)
    deadline = Deadline(timeout)
    with open(message, "rb") as body:
        size = message_size(body)
        connection = http.client.HTTPConnection(url.hostname or "", url.port,
                                                timeout=deadline.left())
        try:
            connection.putrequest("POST", url.path.rstrip("/") + "/checkv2",
                                  skip_accept_encoding=True)
            for name, value in request_headers(screened, size):
                connection.putheader(name, value)
            connection.endheaders()            # connects, sends the request head
            sock = connection.sock
            if sock is None:
                raise ConnectionError("the connection closed")
            for data in pieces(body, size):
                deadline.arm(sock)
                sock.sendall(data)
            deadline.arm(sock)
            response = connection.getresponse()
            received = bytearray()
            while not response.isclosed():   # closed: the body is in (its socket gone)
                deadline.arm(sock)
                data = response.read(CHUNK)
                if not data:
                    break
                received += data
                if len(received) > MAX_ANSWER:
                    raise Garbled(f"an answer longer than {MAX_ANSWER} octets")
            answer = parse_answer(response.status, bytes(received))
        except http.client.HTTPException as error:
            garbled = Garbled(f"not an HTTP answer ({type(error).__name__})")
            return failure(CHECK, checks.rspamd, garbled, deadline)
        except (OSError, Garbled, DaemonError) as error:
            return failure(CHECK, checks.rspamd, error, deadline)
        finally:
            connection.close()
    return judge(answer)


def request_headers(screened: Screened, size: int) -> list[tuple[str, bytes]]:
    """rspamd's envelope headers (its protocol document): the client's IP and
    HELO, the envelope sender (`<>` for the null sender), one Rcpt per
    recipient, our queue id, and our own name as MTA-Name. Hostname (the
    client's reverse DNS name) is left out: a check does not know it, and
    rspamd treats a missing one as unknown."""
    headers = [("Content-Length", str(size)), ("IP", screened.client_ip)]
    if screened.helo:
        headers.append(("Helo", screened.helo))
    headers.append(("From", screened.sender or "<>"))
    headers += [("Rcpt", recipient) for recipient in screened.recipients]
    headers += [("Queue-Id", screened.msg_id), ("MTA-Name", screened.hostname)]
    return [(name, _header_value(value)) for name, value in headers]


def _header_value(text: str) -> bytes:
    """UTF-8 (an SMTPUTF8 address is not Latin-1, http.client's default), with
    control characters replaced so no value can end the header early."""
    return "".join(c if c >= " " and c != "\x7f" else "?" for c in text).encode("utf-8")


def parse_answer(status: int, data: bytes) -> RspamdAnswer:
    """rspamd's JSON answer. Raises Garbled, or DaemonError for an answer that
    says rspamd could not scan ({"error": ...} or an HTTP error status)."""
    try:
        result = json.loads(data)
    except ValueError:
        if status != 200:
            raise DaemonError(f"HTTP status {status}") from None
        raise Garbled(f"not JSON: {printable(data[:60].decode('latin-1'), 60)!r}") from None
    if not isinstance(result, dict):
        raise Garbled("JSON that is not an object")
    if "error" in result:
        raise DaemonError(printable(str(result["error"])))
    if status != 200:
        raise DaemonError(f"HTTP status {status}")
    action = result.get("action")
    if not isinstance(action, str) or action not in REFUSED | DEFERRED | TAGGED | PASSED:
        raise Garbled(f"action {printable(str(action), 40)!r}")
    symbols = result.get("symbols", {})
    messages = result.get("messages", {})
    subject = result.get("subject")
    message = messages.get("smtp_message") if isinstance(messages, dict) else None
    return RspamdAnswer(
        action=action,
        score=_number(result, "score"),
        required=_number(result, "required_score"),
        symbols=tuple(printable(str(name), 100) for name in symbols)
        if isinstance(symbols, dict) else (),
        subject=subject if isinstance(subject, str) else None,
        message=printable(message) if isinstance(message, str) else None,
    )


def _number(result: dict, key: str) -> float:
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Garbled(f"{key} {printable(str(value), 40)!r}")
    return float(value)


def judge(answer: RspamdAnswer) -> CheckResult:
    """rspamd's action decides: reject refuses (550), soft reject and greylist
    defer (451), add header and rewrite subject tag the message for the Junk
    folder, no action passes it."""
    reason = f"action {answer.action}, score {answer.score:.2f} of {answer.required:.2f} " \
             f"({','.join(answer.symbols) or 'no symbols'})"
    if answer.message:
        reason += f": {answer.message}"
    if answer.action in REFUSED:
        return CheckResult(check=CHECK, result="spam", reason=reason,
                           reply=replies.SPAM_REJECTED)
    if answer.action in DEFERRED:
        return CheckResult(check=CHECK, result="defer", reason=reason,
                           reply=replies.SPAM_DEFERRED)
    if answer.action in TAGGED:
        status = spam_status(True, f"{answer.score:.2f}", f"{answer.required:.2f}",
                             answer.symbols)
        headers = [("X-Spam-Flag", "YES"), ("X-Spam-Status", status)]
        if answer.action == "rewrite subject" and answer.subject is not None:
            headers.append((SUBJECT, encode_subject(answer.subject)))
        return CheckResult(check=CHECK, result="spam", reason=reason, junk=True,
                           headers=tuple(headers))
    return CheckResult(check=CHECK, result="ham", reason=reason)


def encode_subject(subject: str, limit: int = 200) -> str:
    """rspamd's new subject (decoded text) as a header value: itself when it is
    printable ASCII, else RFC 2047 encoded words, each short enough (RFC 2047
    section 2: at most 75 characters) and all on one line."""
    text = " ".join(subject.split())[:limit]
    if all(" " <= c <= "~" for c in text):
        return text
    utf8 = email.charset.Charset("utf-8")
    # 10 characters are at most 40 octets: 56 in base64, 68 with =?utf-8?b?...?=
    return " ".join(utf8.header_encode(text[i:i + 10]) for i in range(0, len(text), 10))
