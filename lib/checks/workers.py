"""Worker processes for the message check that costs CPU: DKIM verification
and DMARC (`dmarc.check`). The server's sessions are threads sharing one
interpreter lock; dkimpy is pure Python (its RSA is Python's pow), so in a
session thread every signature check stalls every other session. In a
worker it runs on another core, as OpenDKIM runs beside Postfix. It also
fences off a stranger's message: one that makes dkimpy loop or swell costs
a worker, killed at the time limit, not the server.

The pool starts workers when a check first needs one (none for a server
that screens nothing), up to one per core, each a `python3` running
`serve_requests` below; each answers one request at a time over its
stdin/stdout. A worker exits when its pipe closes, so one never outlives
the server, even one killed with SIGKILL. A worker that dies is replaced,
and the check it was running is done in the session instead (same code,
same answer); one that does not answer in time is killed and the message
gets temperror for DKIM and DMARC, which refuses nothing.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..config.schema import HostPort
from ..core.durable import write_all
from ..core.errors import MailError
from . import dmarc
from .dns import MissingLibrary, resolver
from .verdict import CheckResult, Screened

ROOT = Path(__file__).resolve().parents[2]       # the folder holding lib/
MAX_WORKERS = 4
SPARE_SECONDS = 10.0     # beyond the check's own DNS budget, before a worker counts as stuck
WAIT_FOR_WORKER = 5.0    # seconds a session waits for a free worker, then checks itself
GIVE_UP_AFTER = 3        # workers dying before their first answer, then none are started
_LENGTH = struct.Struct("!I")


class WorkerFailure(MailError):
    """A worker died, or its answer could not be read."""


class WorkerTimeout(WorkerFailure):
    """A worker did not answer in time (and was killed)."""


def default_size() -> int:
    """One worker per core, up to MAX_WORKERS; none on one core, where a worker
    would only add a pipe to the same CPU."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, MAX_WORKERS)


class Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from lib.checks.workers import serve_requests; serve_requests()")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, close_fds=True)
        self.pid = self.process.pid
        self.answered = False                 # has it answered a request yet?

    def ask(self, request: bytes, timeout: float) -> Any:
        """Send a request, wait for its answer (unpickled); WorkerFailure if none.
        Raw reads and writes on the pipes: each system call here gives up the
        server's interpreter lock, and an answer usually takes one read."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            write_all(self.process.stdin.fileno(), _LENGTH.pack(len(request)) + request)
            answer = _read_answer(self.process.stdout.fileno(), time.monotonic() + timeout)
            return pickle.loads(answer)
        except WorkerFailure:
            raise
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, struct.error) as error:
            raise WorkerFailure(f"check worker {self.pid} failed: {error}") from None

    def stop(self, wait: float = 1.0) -> None:
        """Close its pipe (it exits at once when idle); kill it if it does not."""
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass
        self.process.wait()


def _read_answer(fd: int, deadline: float) -> bytes:
    """One length-prefixed answer from the worker's stdout (it sends nothing else)."""
    received = bytearray()
    wanted = _LENGTH.size
    while len(received) < wanted:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise WorkerTimeout("check worker did not answer in time")
        chunk = os.read(fd, max(wanted - len(received), 1 << 16))
        if not chunk:
            raise WorkerFailure("check worker exited")
        received += chunk
        if wanted == _LENGTH.size and len(received) >= wanted:
            wanted += _LENGTH.unpack_from(received)[0]
    return bytes(received[_LENGTH.size:])


class CheckWorkers:
    """The pool. `dmarc()` is `dmarc.check` run in a worker."""

    def __init__(self, size: int | None = None, log: Any = None, *,
                 time_limit: float | None = None):
        self.size = default_size() if size is None else size
        self.log = log                        # an EventLog, for starts and failures
        self.time_limit = time_limit          # for an answer; None: the check's budget + spare
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._started = 0                     # workers alive (idle or busy)
        self._cond = threading.Condition()
        self._stopped = False
        self._broken = 0                      # workers in a row that died before answering

    @property
    def enabled(self) -> bool:
        return self.size > 0 and not self._stopped and self._broken < GIVE_UP_AFTER

    def dmarc(self, screened: Screened, message: bytes, mode: str,
              nameservers: tuple[HostPort, ...], spf_result: str | None,
              budget: float = dmarc.TIME_BUDGET) -> tuple[CheckResult, CheckResult]:
        """(dkim result, dmarc result), as dmarc.check gives them. A worker that
        died: done here instead. One that did not answer: temperror for both."""
        if not self.enabled:
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        request = pickle.dumps((screened, message, mode, nameservers, spf_result, budget))
        try:
            worker = self._take()
        except WorkerFailure:                        # stopping, or every worker busy
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        except OSError as error:                     # no process to be had
            self._note_broken(f"cannot start a check worker: {error}")
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        limit = self.time_limit if self.time_limit is not None else budget + SPARE_SECONDS
        try:
            answer = worker.ask(request, limit)
        except WorkerTimeout:
            self._discard(worker, "no answer in time")
            why = f"verification did not finish within {limit:g}s"
            return (CheckResult("dkim", "temperror", why, auth=f"dkim=temperror ({why})"),
                    CheckResult("dmarc", "temperror", why, auth=f"dmarc=temperror ({why})"))
        except WorkerFailure as failure:
            self._discard(worker, str(failure))
            if not worker.answered:
                self._note_broken(str(failure))
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        worker.answered = True
        self._broken = 0
        self._give_back(worker)
        if answer[0] == "missing":
            raise MissingLibrary(answer[1], answer[2])
        if answer[0] != "ok":
            self._report(worker.pid, f"the check failed there: {answer[1]}")
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        return answer[1]

    @staticmethod
    def _here(screened: Screened, message: bytes, mode: str,
              nameservers: tuple[HostPort, ...], spf_result: str | None,
              budget: float) -> tuple[CheckResult, CheckResult]:
        return dmarc.check(screened, message, mode, resolver(nameservers),
                           spf_result=spf_result, budget=budget)

    def _take(self) -> Worker:
        """An idle worker, or a new one; WorkerFailure when every worker stays
        busy for WAIT_FOR_WORKER (a stuck one must not hold up the others)."""
        deadline = time.monotonic() + WAIT_FOR_WORKER
        with self._cond:
            while True:
                if self._stopped:
                    raise WorkerFailure("check workers stopped")
                if self._idle:
                    return self._idle.pop()
                if self._started < self.size:
                    self._started += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerFailure("every check worker is busy")
                self._cond.wait(left)
        try:
            worker = Worker()
        except OSError:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        if self.log is not None:
            self.log.info("check_worker_started", pid=worker.pid)
        return worker

    def _give_back(self, worker: Worker) -> None:
        with self._cond:
            if self._stopped:
                self._all.discard(worker)
            else:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.stop()

    def _discard(self, worker: Worker, why: str) -> None:
        worker.kill()
        self._report(worker.pid, why)
        with self._cond:
            self._started -= 1
            self._all.discard(worker)
            self._cond.notify()

    def _note_broken(self, why: str) -> None:
        """A worker that dies before its first answer cannot start (an interpreter
        or a lib/ the mail user may not read): after a few, the checks stay in
        the sessions, said once in the log, rather than a process per message."""
        self._broken += 1
        if self._broken == GIVE_UP_AFTER and self.log is not None:
            self.log.error("check_workers_disabled", reason=why,
                           detail="DKIM/DMARC run in the sessions from now on")

    def _report(self, pid: int, why: str) -> None:
        if self.log is not None:
            self.log.warning("check_worker_failed", pid=pid, reason=why)

    def pids(self) -> list[int]:
        """The workers' process ids, idle or busy (tests)."""
        with self._cond:
            return sorted(worker.pid for worker in self._all)

    def stop(self) -> None:
        """Stop every idle worker (by closing its pipe; killed if it lingers);
        a busy one is stopped when its session gives it back."""
        with self._cond:
            self._stopped = True
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.stop()


# ---------------------------------------------------------------- in the worker

def serve_requests() -> None:
    """A worker's life: read a request, answer it, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a ^C to `serve` is the server's
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                          # nothing else may write to the pipe
    while True:
        head = source.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack(head)
        request = source.read(length)
        if len(request) < length:
            return
        answer = _answer(request)
        try:
            sink.write(_LENGTH.pack(len(answer)) + answer)
            sink.flush()
        except OSError:
            return


def _answer(request: bytes) -> bytes:
    """("ok", result), ("missing", module, needed_for) or ("error", text)."""
    answer: tuple
    try:
        screened, message, mode, nameservers, spf_result, budget = pickle.loads(request)
        answer = ("ok", dmarc.check(screened, message, mode, resolver(nameservers),
                                    spf_result=spf_result, budget=budget))
    except MissingLibrary as missing:
        answer = ("missing", missing.module, missing.needed_for)
    except Exception as error:             # a bug: the session runs it again and reports it
        answer = ("error", f"{type(error).__name__}: {error}")
    return pickle.dumps(answer)
