"""Bounded line reading from a client's socket: the one place that calls recv."""

from __future__ import annotations

RECV_SIZE = 256 * 1024      # big reads: DATA is decoded a chunk at a time, not line by line


class LineTooLong(Exception):
    """A line exceeded its limit; the rest of it, up to LF, has been discarded."""


class LineReader:
    """Bounded line reading from a socket, with a buffer the caller can inspect.

    `has_buffered()` tells the SMTP handler whether the client has pipelined
    more commands (RFC 2920: replies may be held back until the input buffer
    runs dry); `discard_buffer()` drops what a client sent before a TLS
    handshake (CVE-2011-0411).
    """

    def __init__(self, sock, recv_size: int = RECV_SIZE, wait=None):
        self.sock = sock
        self._buf = bytearray()
        # recv_into one reused buffer: a fresh bytes object of RECV_SIZE per recv()
        # would cost an mmap and munmap every time.
        self._scratch = memoryview(bytearray(recv_size))
        # wait(first) is called before each read (first=True) and whenever a read
        # comes back empty-handed (a socket with a receive timeout): it may raise
        # to end the wait (deadline, shutdown). Without it a timeout is retried.
        self.wait = wait

    def _recv(self) -> memoryview | None:
        """One read from the socket; None when the client has gone."""
        first = True
        while True:
            if self.wait is not None:
                self.wait(first)
            first = False
            try:
                count = self.sock.recv_into(self._scratch)
            except (BlockingIOError, TimeoutError):   # a receive timeout (kernel's or
                continue                              # ssl's): ask wait() again
            if not count:
                return None
            return self._scratch[:count]

    def _fill(self) -> bool:
        data = self._recv()
        if data is None:
            return False
        self._buf += data
        return True

    def readline(self, limit: int) -> bytes:
        """One line including its LF; b"" when the client has gone.

        A line longer than `limit` octets (LF included) is read to its end,
        thrown away, and reported with LineTooLong.
        """
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                if end + 1 > limit:
                    del self._buf[:end + 1]
                    raise LineTooLong()
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            if len(self._buf) >= limit:
                self._discard_to_newline()
                raise LineTooLong()
            scanned = len(self._buf)
            if not self._fill():
                return b""

    def _discard_to_newline(self) -> None:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                del self._buf[:end + 1]
                return
            self._buf.clear()
            if not self._fill():
                return

    def read_chunk(self) -> bytes:
        """What is buffered, else one recv(); b"" when the client has gone."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        received = self._recv()
        return b"" if received is None else bytes(received)

    def unread(self, data: bytes) -> None:
        self._buf[:0] = data

    def has_buffered(self) -> bool:
        pending = getattr(self.sock, "pending", None)     # decrypted bytes inside ssl
        return bool(self._buf) or bool(pending and pending())

    def discard_buffer(self) -> int:
        dropped = len(self._buf)
        self._buf.clear()
        return dropped
