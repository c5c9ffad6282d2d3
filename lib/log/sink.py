"""Where log lines go: stderr, syslog, or a file that survives logrotate, written
by one thread so that a slow disk or syslog never stalls a client session.

Sessions only put records on a queue; the writer drains it in batches (one
write and one flush per burst), and never stops: when the target fails, the
lines go to stderr until it works again.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import cast

from .events import LOGGER_NAME, LineFormatter

SYSLOG_SOCKET = "/dev/log"
LOG_FILE_MODE = 0o640        # the log holds login names and addresses
DRAIN_SECONDS = 0.05         # log lines reach the target at most this late
BATCH = 4096                 # records written in one go at the most

_listener: logging.handlers.QueueListener | None = None

# Every record would otherwise look up the process id and thread name, and walk
# the stack for the caller's file and line (logging's own advice for speed is
# _srcfile = None); the key=value line carries its own ids, and no format here
# shows a file or line.
logging.logProcesses = False
logging.logThreads = False
logging.logMultiprocessing = False
logging._srcfile = None


class FastQueueHandler(logging.handlers.QueueHandler):
    """Our records carry a finished message and no arguments: queue them as they
    are. The stock prepare() copies and re-formats every record."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args or record.exc_info:
            return super().prepare(record)
        return record


class BatchingListener(logging.handlers.QueueListener):
    """Writes whatever has queued up in one go: one write and one flush per
    burst of records, not per record."""

    def _monitor(self) -> None:
        # Sleep and drain rather than block in get(): a thread blocked in get()
        # would have to be woken (a futex call and a context switch) for every
        # record a session puts on the queue.
        records = cast(queue.SimpleQueue, self.queue)  # what configure() gives it
        sentinel = getattr(self, "_sentinel", None)  # what stop() puts on the queue (None)
        while True:
            batch: list = []
            try:
                while len(batch) < BATCH:
                    batch.append(records.get_nowait())
            except queue.Empty:
                pass
            stop = any(item is sentinel for item in batch)
            batch = [item for item in batch if item is not sentinel]
            for handler in self.handlers:
                _emit_batch(handler, batch)
            if stop:
                return
            if len(batch) < BATCH:
                time.sleep(DRAIN_SECONDS)


def _lock_of(handler: logging.Handler) -> threading.RLock:
    lock = handler.lock
    if lock is None:                  # only before createLock(), which __init__ calls
        handler.createLock()
        lock = handler.lock
    return cast(threading.RLock, lock)


def _emit_batch(handler: logging.Handler, batch: list[logging.LogRecord]) -> None:
    """Write a batch; never raise, so the log thread (and its queue) never stops."""
    if not batch:
        return
    if isinstance(handler, logging.StreamHandler) and not \
            isinstance(handler, logging.handlers.SysLogHandler):
        try:
            if isinstance(handler, ReopeningFileHandler):
                handler.reopenIfNeeded()      # logrotate moved the file away
            text = "".join(handler.format(record) + handler.terminator for record in batch)
            with _lock_of(handler):
                handler.stream.write(text)
                handler.flush()
            return
        except (OSError, AttributeError) as error:
            _log_trouble(f"cannot write the log ({error}); these lines go to stderr:", batch)
            return
        except Exception:
            pass                  # write them one by one, so one bad line costs only itself
    for record in batch:
        handler.handle(record)


_trouble_reported = 0.0


def _log_trouble(note: str, batch: list[logging.LogRecord]) -> None:
    """The log target failed: the lines go to stderr (systemd's journal) instead."""
    global _trouble_reported
    formatter = LineFormatter()
    try:
        if time.monotonic() - _trouble_reported > 60:
            _trouble_reported = time.monotonic()
            sys.stderr.write(f"mailbox_appliance: {note}\n")
        sys.stderr.write("".join(formatter.format(record) + "\n" for record in batch))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """Reopens the file when logrotate moves it away (WatchedFileHandler), and
    keeps trying after a reopen failed: the stock one gives up for good then."""

    def _open(self):
        # Created 0640 whatever the umask (the SysV script's is 022): the log
        # holds login names and addresses.
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopenIfNeeded(self) -> None:
        if self.stream is None:
            self.stream = self._open()          # raises again while it cannot
            self._statstream()
            return
        super().reopenIfNeeded()


def open_handler(target: str) -> logging.Handler:
    """The handler for a [server] log value; raises OSError when it cannot be opened."""
    if target == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
    elif target == "syslog":
        if not os.path.exists(SYSLOG_SOCKET):
            # SysLogHandler would fall back to UDP localhost:514, where nothing listens
            # on a box without a syslog daemon: every line would vanish unseen.
            raise FileNotFoundError(errno.ENOENT, "no syslog daemon listens there "
                                    "(install rsyslog, or set a log file)", SYSLOG_SOCKET)
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(LineFormatter(with_time=False))
        handler.ident = "mailbox_appliance: "
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        handler = ReopeningFileHandler(target, encoding="utf-8", errors="backslashreplace")
        handler.setFormatter(LineFormatter())
    return handler


def configure(target: str, level: str) -> None:
    """Send the log to `target` ([server] log) at `level`. Sessions only put records on a queue; one
    thread does the writing, so a slow disk or syslog never stalls a client.
    The new target is opened before the old one is let go: when it cannot be
    opened (OSError), the old logging stays as it was."""
    global _listener
    handler = open_handler(target)
    stop()
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    records: queue.SimpleQueue = queue.SimpleQueue()
    _listener = BatchingListener(records, handler)
    _listener.start()
    logger.addHandler(FastQueueHandler(records))
    logger.setLevel(level.upper())
    logger.propagate = False


def stop() -> None:
    """Write out every queued record (at exit, and before re-configuring)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        for handler in _listener.handlers:
            handler.close()
        _listener = None


def reopen() -> None:
    """After logrotate: the file handler opens the new file (it also notices by itself)."""
    if _listener is not None:
        for handler in _listener.handlers:
            if isinstance(handler, ReopeningFileHandler):
                try:
                    with _lock_of(handler):
                        handler.reopenIfNeeded()
                except OSError:
                    pass                     # reported by the log thread when it writes
