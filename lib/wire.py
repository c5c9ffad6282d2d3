"""Bytes on the wire: line limits, line-ending conversion, byte-stuffing.

Messages are stored with LF line endings and no CR (see maildir); SMTP and
POP3 carry them with CRLF. Every converter here works on whole chunks with
bytes.replace (C speed) and carries the one or two bytes that can straddle a
chunk boundary, so a 25 MB message is never handled line by line.
"""

from __future__ import annotations

MAX_COMMAND_LINE = 512    # RFC 5321 4.5.3.1.4, including CRLF
MAX_TEXT_LINE = 1000      # RFC 5321 4.5.3.1.6, including CRLF
MAX_POP3_LINE = 255       # RFC 2449 4: a POP3 command line, including CRLF


class LfConverter:
    """Any line endings -> LF only. CRLF becomes LF; a bare CR is dropped.

    Used where a whole message arrives from a program (sendmail) rather than
    from SMTP DATA; the result obeys the store's rule: no CR at all.
    """

    def __init__(self):
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"")

    def flush(self) -> bytes:
        self._pending_cr = False      # a trailing bare CR is dropped like any other
        return b""


class CrlfCounter:
    """Counts the octets of a file once every bare LF is sent as CRLF and a
    missing final line ending is added: the POP3 size of a file written by
    another program (CRLF, LF or mixed endings)."""

    def __init__(self):
        self._octets = 0
        self._bare_lf = 0
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        lf = chunk.count(b"\n") - chunk.count(b"\r\n")
        if self._last == b"\r" and chunk[:1] == b"\n":
            lf -= 1          # the CR that ended the previous chunk pairs with this LF
        self._bare_lf += lf
        self._octets += len(chunk)
        self._last = chunk[-1:]

    def total(self) -> int:
        if self._octets == 0:
            return 0
        missing_end = 0 if self._last == b"\n" else 2
        return self._octets + self._bare_lf + missing_end
