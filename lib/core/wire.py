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
MAX_SASL_LINE = 12288     # RFC 4954 4: a SASL response line the server must accept
MAX_HOPS = 30             # Received headers before we call it a mail loop (RFC 5321 6.3)


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '١', which int() refuses
    or reads as something the client did not mean."""
    return text.isascii() and text.isdigit()


class _CrCarry:
    """Holds back a CR that ends a chunk, so a CRLF split across two chunks is
    still seen as one line ending."""

    def __init__(self):
        self.pending = False

    def join(self, chunk: bytes) -> bytes:
        """The chunk with the CR held from the last one, minus a CR at its end."""
        if self.pending:
            chunk = b"\r" + chunk
        self.pending = chunk.endswith(b"\r")
        return chunk[:-1] if self.pending else chunk


class LfConverter:
    """Any line endings -> LF only. CRLF becomes LF; a bare CR is dropped.

    Used where a whole message arrives from a program (sendmail) rather than
    from SMTP DATA; the result obeys the store's rule: no CR at all.
    """

    def __init__(self):
        self._carry = _CrCarry()

    def feed(self, chunk: bytes) -> bytes:
        return self._carry.join(chunk).replace(b"\r\n", b"\n").replace(b"\r", b"")

    def flush(self) -> bytes:
        self._carry.pending = False   # a trailing bare CR is dropped like any other
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


# ---------------------------------------------------------------- SMTP DATA

_DATA_END = b"\r\n.\r\n"


class DataReceiver:
    """SMTP DATA: wire bytes in, the message as stored (LF endings, no CR) out.

    The end of data is exactly CRLF "." CRLF (RFC 5321 4.1.1.4). A bare LF
    ends a line of content (as Postfix's default "normalize" does) but never
    the data; a bare CR is dropped. So `\\n.\\n`, `\\r.\\r` and `\\n.\\r\\n`
    are content, and a smuggled second message stays inside the first
    (CVE-2023-51764 class). Lines starting with "." lose one dot (4.5.2).

    Work is done per chunk on complete lines, with bytes.replace; only the
    unfinished last line is carried to the next chunk. The result does not
    depend on how the stream is split into chunks (a property test holds it
    to that). A carried line longer than a text line is compacted (its CRs
    dropped, as decoding drops them) and, once it is overlong, no longer
    kept, only counted: memory stays bounded, `size` stays exact, and the
    content returned after `overlong` is incomplete (the message is refused).
    """

    def __init__(self, max_line: int = MAX_TEXT_LINE):
        self._max_content = max_line - 2      # octets before CRLF (RFC 5322 2.1.1: 998)
        self._pending = b""                   # the unfinished line; no LF in it
        self._after_crlf = True               # the line in _pending follows a CRLF
        self._mid_line = False                # _pending no longer holds its line's start
        self.done = False
        self.leftover = b""                   # bytes after the end: pipelined commands
        self.octets = 0                       # message octets on the wire, dot-stuffed
        self.size = 0                         # message octets with CRLF, not stuffed (RFC 1870)
        self.lines = 0                        # LFs in the content the last feed() returned
        self.overlong = False                 # some line exceeded 998 octets

    def feed(self, chunk: bytes) -> bytes:
        """Consume `chunk`; return the decoded content it completes (maybe b"")."""
        if self.done:
            self.leftover += chunk
            return b""
        self.octets += len(chunk)
        buf = self._pending + chunk if self._pending else chunk
        if self._after_crlf and buf.startswith(b".\r\n"):
            return self._finish(b"", buf[3:])
        end = buf.find(_DATA_END)
        if end >= 0:
            return self._finish(buf[:end + 2], buf[end + 5:])
        cut = buf.rfind(b"\n") + 1
        region, self._pending = buf[:cut], buf[cut:]
        if len(self._pending) > self._max_content + 2:
            self._shrink_pending()
        if not region:
            self.lines = 0
            return b""
        self._after_crlf = region.endswith(b"\r\n")
        return self._decode(region)

    def _shrink_pending(self) -> None:
        """Bound the carried line. Its CRs go (decoding drops every CR of a line
        but one before its LF, and the last byte is kept for that); the line,
        once longer than a text line, goes too, counted in `size`. The end
        marker can start only at the last byte, which stays."""
        line, last = self._pending[:-1].replace(b"\r", b""), self._pending[-1:]
        dot = 1 if not self._mid_line and line.startswith(b".") else 0
        self._after_crlf = False               # this line is no lone "." any more
        if self._mid_line or len(line) - dot + (last != b"\r") > self._max_content:
            self.overlong = True
            self.size += len(line) - dot
            self._pending = last
            self._mid_line = True
        else:
            self._pending = line + last

    def _finish(self, region: bytes, rest: bytes) -> bytes:
        self.done = True
        self.leftover = rest
        self.octets -= len(rest) + 3           # the ".\r\n" that ends the data is no content
        self._pending = b""
        self.lines = 0
        return self._decode(region) if region else b""

    def _decode(self, region: bytes) -> bytes:
        """Complete lines (starting at a line start, or where _pending was cut) -> stored form."""
        out = region.replace(b"\r\n", b"\n")
        if b"\r" in out:
            out = out.replace(b"\r", b"")
        if self._mid_line:                     # the first line's start was counted already
            self._mid_line = False
            if b"\n." in out:
                out = out.replace(b"\n.", b"\n")
        elif out.startswith(b".") or b"\n." in out:
            out = (b"\n" + out).replace(b"\n.", b"\n")[1:]
        lines = out.split(b"\n")         # one pass gives the line count and the longest line
        if not self.overlong and len(out) > self._max_content and \
                max(map(len, lines)) > self._max_content:
            self.overlong = True
        self.lines = len(lines) - 1         # LFs in `out`: its CRLF size is len(out) + lines
        self.size += len(out) + self.lines
        return out


# ---------------------------------------------------------------- POP3 RETR and SMTP DATA output

class MessageEncoder:
    """A stored message -> its octets on the wire: CRLF line endings, lines
    starting with "." byte-stuffed (RFC 1939 3, RFC 5321 4.5.2), a final CRLF
    added when the file lacks one, and the closing "." line. `foreign` files
    (written by another program) may already hold CRLF; our own hold LF only.
    The size of the output before stuffing is what CrlfCounter (and the ,W=
    of our names) says.
    """

    def __init__(self, foreign: bool = False):
        self._foreign = foreign
        self._line_start = True     # the next byte starts a line
        self._carry = _CrCarry()    # foreign: a CR at the end of the last chunk
        self._empty = True
        self._ends_with_lf = True

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._foreign:
            chunk = self._carry.join(chunk)
            if not chunk:
                return b""
            out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        else:
            out = chunk.replace(b"\n", b"\r\n")
        self._empty = False
        self._ends_with_lf = chunk.endswith(b"\n")
        if b"\n." in out or (self._line_start and out.startswith(b".")):
            out = (b"\n" + out if self._line_start else out).replace(b"\n.", b"\n..")
            if self._line_start:
                out = out[1:]
        self._line_start = self._ends_with_lf
        return out

    def finish(self) -> bytes:
        """The rest, the missing final CRLF if any, and the terminating '.' line."""
        tail = b""
        if self._carry.pending:
            tail = b"\r"
            self._carry.pending = False
            self._ends_with_lf = False
            self._empty = False
        if not self._empty and not self._ends_with_lf:
            tail += b"\r\n"
        return tail + b".\r\n"
