"""Talking to a scanner daemon (spamd, rspamd, clamd) within one time budget:
connecting over TCP or a unix socket, streaming the message, reading the
answer, and saying in words why a scan could not be done."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..config.schema import HostPort
from .verdict import ERROR, CheckResult

T = TypeVar("T")

MAX_STATUS = 900        # X-Spam-Status stays well inside one 998-octet header line
CHUNK = 64 * 1024       # the message goes out in pieces this size, never whole: a
                        # 25 MB message must not sit in memory once per scanner


class Garbled(Exception):
    """The daemon answered, but not in its protocol (or not at all in full)."""


class DaemonError(Exception):
    """The daemon understood and said it could not scan (clamd's `... ERROR`,
    spamd's EX_* codes, rspamd's {"error": ...})."""


class Deadline:
    """One time budget for a whole scan: connecting, sending and reading together,
    so a daemon that answers a byte at a time cannot stretch it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; TimeoutError once the budget is spent."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    def arm(self, sock: socket.socket) -> None:
        """Bound the socket's next operation by what is left of the budget."""
        sock.settimeout(self.left())


def connect(address: HostPort | Path, deadline: Deadline) -> socket.socket:
    """A connected stream socket: a unix socket for a Path, else TCP."""
    if isinstance(address, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            deadline.arm(sock)
            sock.connect(str(address))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((address.host, address.port), timeout=deadline.left())


def message_size(message: BinaryIO) -> int:
    """The octets the scanner is told about (and sent): the file as stored."""
    return os.fstat(message.fileno()).st_size


def pieces(message: BinaryIO, size: int) -> Iterator[bytes]:
    """Exactly `size` octets of the message, CHUNK at a time."""
    left = size
    while left > 0:
        data = message.read(min(CHUNK, left))
        if not data:
            # not network trouble: the stored message changed under us
            raise RuntimeError(f"the message file ended {left} octets early")
        left -= len(data)
        yield data


def exchange(sock: socket.socket, request: Iterable[bytes], deadline: Deadline,
             limit: int) -> bytes:
    """Send every piece of `request`, close our side, and return all the daemon
    says until it closes (at most `limit` octets).

    A daemon may answer and hang up before it has read everything (clamd past
    StreamMaxLength does): when sending fails, what it already said is the answer."""
    try:
        for data in request:
            deadline.arm(sock)
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except TimeoutError:
        raise
    except OSError as error:
        early = _read_what_is_there(sock, deadline, limit)
        if not early:
            raise error
        return early
    return read_to_end(sock, deadline, limit)


def read_to_end(sock: socket.socket, deadline: Deadline, limit: int) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    received = bytearray()
    while True:
        deadline.arm(sock)
        data = sock.recv(CHUNK)
        if not data:
            return bytes(received)
        received += data
        if len(received) > limit:
            raise Garbled(f"an answer longer than {limit} octets")


def _read_what_is_there(sock: socket.socket, deadline: Deadline, limit: int) -> bytes:
    """What the daemon sent before hanging up, without waiting for more."""
    received = bytearray()
    try:
        # it is already closing: its answer is in our buffer, or never comes
        sock.settimeout(min(0.5, deadline.left()))
        while len(received) <= limit:
            data = sock.recv(CHUNK)
            if not data:
                break
            received += data
    except OSError:
        pass
    return bytes(received[:limit])


def describe(error: BaseException, deadline: Deadline) -> str:
    """Why a scan failed, in the words of a log line."""
    if isinstance(error, TimeoutError):
        return f"no answer within {deadline.seconds:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, FileNotFoundError):
        return "no such socket"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "connection closed by the daemon"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def failure(check: str, address: object, error: BaseException, deadline: Deadline) -> CheckResult:
    """The ERROR result for a scan that could not be done ([checks] scanner_failure
    decides what follows, not the client)."""
    if isinstance(error, DaemonError):
        reason = f"{check} at {address} could not scan the message: {error}"
    elif isinstance(error, Garbled):
        reason = f"{check} at {address} gave an unreadable answer: {error}"
    else:
        reason = f"cannot reach {check} at {address}: {describe(error, deadline)}"
    return CheckResult(check=check, result=ERROR, reason=reason)


def printable(text: str, limit: int = 200) -> str:
    """Text from a daemon made safe for a reply or a header: printable ASCII, one
    line, bounded (a virus name or a rule list must not smuggle a CRLF)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit]


def spam_status(spam: bool, score: str, required: str, tests: tuple[str, ...]) -> str:
    """An X-Spam-Status value as SpamAssassin writes it (mail filters match on it):
    `Yes, score=15.0 required=5.0 tests=GTUBE,NO_RELAYS`; the list of tests is
    cut at a comma when it would not fit on one header line."""
    start = f"{'Yes' if spam else 'No'}, score={score} required={required} tests="
    listed = ",".join(tests) or "none"
    if len(start) + len(listed) > MAX_STATUS:
        listed = listed[:MAX_STATUS - len(start) - 4].rsplit(",", 1)[0] + ",..."
    return start + listed


def converse(check: str, address: HostPort | Path, message: Path,
             request: Callable[[BinaryIO, int], Iterable[bytes]],
             parse: Callable[[bytes], T], timeout: float, limit: int) -> T | CheckResult:
    """Send `request(message file, size)` to the daemon and parse its whole answer,
    all within one time budget; network trouble or a garbled answer is the
    check's error result (never an exception)."""
    deadline = Deadline(timeout)
    with open(message, "rb") as body:
        size = message_size(body)
        try:
            with connect(address, deadline) as sock:
                answer = exchange(sock, request(body, size), deadline, limit)
            return parse(answer)
        except (OSError, Garbled, DaemonError) as error:
            return failure(check, address, error, deadline)
