"""Worker processes for the message check that costs CPU: DKIM verification
and DMARC (`dmarc.check`). The server's sessions are threads sharing one
interpreter lock; dkimpy is pure Python (its RSA is Python's pow), so in a
session thread every signature check stalls every other session. In a
worker it runs on another core, as OpenDKIM runs beside Postfix. It also
fences off a stranger's message: one that makes dkimpy loop or swell costs
a worker, killed at the time limit, not the server.

The pool starts workers when a check first needs one (none for a server
that screens nothing), up to one per core, each a `python3` running
`serve_requests` below; each answers its requests in order over its
stdin/stdout, and sessions queue requests at a busy worker rather than
wait for a free one. A worker exits when its pipe closes, so one never
outlives the server, even one killed with SIGKILL. A worker that dies is
replaced, and the checks it held are done in their sessions instead (same
code, same answer); one stuck on a message past the time limit is killed,
that message gets temperror for DKIM and DMARC (which refuses nothing), and
the checks queued behind it are done in their sessions.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
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
WAIT_FOR_WORKER = 5.0    # seconds a session waits for room at a worker, then checks itself
MAX_QUEUED = 4           # requests one worker holds at most (sent, not yet answered)
WATCH_SECONDS = 0.25     # how often workers are looked at for a request past its time
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
    """One worker process, its pipes, and the requests it has been sent and not
    yet answered (it answers them in the order they came)."""

    def __init__(self) -> None:
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from lib.checks.workers import serve_requests; serve_requests()")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, close_fds=True)
        self.pid = self.process.pid
        self.answered = False                 # has it answered a request yet?
        self.load = 0                         # requests given to it and not yet answered
        self.waiting: deque[_Request] = deque()   # sent, in order, awaiting their answers
        self.sending = threading.Lock()       # one request written at a time, in order
        self.reading = False                  # a session is reading its answers now
        self.dropped = False
        self._received = bytearray()          # answer bytes read and not yet handed out

    def send(self, request: bytes) -> None:
        assert self.process.stdin is not None
        write_all(self.process.stdin.fileno(), _LENGTH.pack(len(request)) + request)

    def read_answers(self) -> list[Any]:
        """The answers complete after one read (often all there are), unpickled;
        WorkerFailure when the pipe ends (the pool's watch kills a worker that
        takes too long). One blocking read: each system call gives up the
        server's interpreter lock, and must win it back."""
        assert self.process.stdout is not None
        try:
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
        except OSError as error:
            raise WorkerFailure(f"check worker {self.pid} failed: {error}") from None
        if not chunk:
            raise WorkerFailure(f"check worker {self.pid} exited")
        received = self._received
        received += chunk
        answers = []
        while len(received) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(received)
            if len(received) < _LENGTH.size + length:
                break
            try:
                answers.append(pickle.loads(received[_LENGTH.size:_LENGTH.size + length]))
            except (ValueError, EOFError, pickle.UnpicklingError) as error:
                raise WorkerFailure(f"check worker {self.pid} failed: {error}") from None
            del received[:_LENGTH.size + length]
        return answers

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


class _Request:
    """One session's request to a worker: its answer, or why there is none, or
    its turn to read the worker's answers. Its session sleeps on its own bell,
    rung once, so that an answer wakes only the session it is for."""
    __slots__ = ("deadline", "answer", "failure", "turn", "_rung", "_bell")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline              # time.monotonic() by which it must be answered
        self.answer: Any = None
        self.failure: WorkerFailure | None = None
        self.turn = False                     # this session reads the worker's answers
        self._rung = False
        self._bell = threading.Lock()
        self._bell.acquire()

    @property
    def settled(self) -> bool:
        return self.answer is not None or self.failure is not None or self.turn

    def ring(self) -> None:
        """Wake its session (the pool's lock held); once at most."""
        if not self._rung:
            self._rung = True
            self._bell.release()

    def sleep(self, timeout: float) -> None:
        self._bell.acquire(timeout=max(timeout, 0.0))

    def give_up(self) -> None:
        """Its session stops waiting (the pool's lock held): no ring any more."""
        self._rung = True


class CheckWorkers:
    """The pool. `dmarc()` is `dmarc.check` run in a worker.

    Requests are pipelined: a session writes its request to the worker with
    the fewest waiting (starting one while fewer than `size` run) and does not
    wait for that worker to be free, so a worker goes from one request to the
    next without sleeping in between. Answers come back in order; whichever
    waiting session reads the pipe hands every answer it finds to its owner."""

    def __init__(self, size: int | None = None, log: Any = None, *,
                 time_limit: float | None = None):
        self.size = default_size() if size is None else size
        self.log = log                        # an EventLog, for starts and failures
        self.time_limit = time_limit          # for an answer; None: the check's budget + spare
        self._all: list[Worker] = []          # running workers
        self._started = 0                     # workers running or being started
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)   # for a session waiting for room
        self._waiting_for_room = 0
        self._stopped = False
        self._broken = 0                      # workers in a row that died before answering
        self.most_queued = 0                  # the most requests one worker held at once
        self._watch: threading.Thread | None = None

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
        limit = self.time_limit if self.time_limit is not None else budget + SPARE_SECONDS
        try:
            worker = self._choose()
        except WorkerFailure:                        # stopping, or every worker full
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        except OSError as error:                     # no process to be had
            self._note_broken(f"cannot start a check worker: {error}")
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        mine = _Request(time.monotonic() + limit)
        try:
            self._send(worker, mine, request)
            answer = self._await(worker, mine)
        except WorkerTimeout:
            why = f"verification did not finish within {limit:g}s"
            return (CheckResult("dkim", "temperror", why, auth=f"dkim=temperror ({why})"),
                    CheckResult("dmarc", "temperror", why, auth=f"dmarc=temperror ({why})"))
        except WorkerFailure:                        # counted by _drop
            return self._here(screened, message, mode, nameservers, spf_result, budget)
        self._broken = 0
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

    # ------------------------------------------------------------ sending

    def _choose(self) -> Worker:
        """The worker to send to, its load counted: an idle one, else a new one,
        else the least loaded with room. WorkerFailure when every worker holds
        MAX_QUEUED for WAIT_FOR_WORKER (stuck ones must not hold up the rest)."""
        deadline = time.monotonic() + WAIT_FOR_WORKER
        with self._lock:
            while True:
                if self._stopped:
                    raise WorkerFailure("check workers stopped")
                best = min(self._all, key=lambda worker: worker.load, default=None)
                if best is not None and (best.load == 0 or (
                        self._started >= self.size and best.load < MAX_QUEUED)):
                    best.load += 1
                    return best
                if self._started < self.size:
                    self._started += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerFailure("every check worker is busy")
                self._waiting_for_room += 1
                try:
                    self._room.wait(left)
                finally:
                    self._waiting_for_room -= 1
        try:
            worker = Worker()
        except OSError:
            with self._lock:
                self._started -= 1
                self._make_room()
            raise
        worker.load = 1
        with self._lock:
            self._all.append(worker)
            if self._watch is None:
                self._watch = threading.Thread(target=self._watch_for_stuck_workers,
                                               name="check-worker-watch", daemon=True)
                self._watch.start()
        if self.log is not None:
            self.log.info("check_worker_started", pid=worker.pid)
        return worker

    def _watch_for_stuck_workers(self) -> None:
        """Kill a worker whose oldest request is past its deadline: its reader
        blocks in read() and learns it from the end of the pipe. Runs while
        there are workers (started again with the next one)."""
        while True:
            time.sleep(WATCH_SECONDS)
            now = time.monotonic()
            with self._lock:
                if not self._all:
                    self._watch = None
                    return
                stuck = [worker for worker in self._all
                         if worker.waiting and worker.waiting[0].deadline <= now]
            for worker in stuck:
                self._drop(worker, "no answer in time", stuck=True)

    def _make_room(self) -> None:
        """A worker took an answer off or left (the lock held): wake one waiting."""
        if self._waiting_for_room:
            self._room.notify()

    def _send(self, worker: Worker, mine: _Request, request: bytes) -> None:
        with worker.sending:                 # the order written is the order answered
            with self._lock:
                if worker.dropped:
                    raise WorkerFailure(f"check worker {worker.pid} was stopped")
                worker.waiting.append(mine)
                self.most_queued = max(self.most_queued, len(worker.waiting))
            try:
                worker.send(request)
            except OSError as error:
                self._drop(worker, f"check worker {worker.pid} failed: {error}")
        if mine.failure is not None:
            raise mine.failure

    # ------------------------------------------------------------ answers

    def _await(self, worker: Worker, mine: _Request) -> Any:
        """Wait for this request's answer. One waiting session at a time reads
        the worker's pipe and hands each answer it finds to its owner; once it
        has its own, the next in line reads. Past the deadline the worker
        counts as stuck, and is killed (by the watch, or here)."""
        with self._lock:
            if not mine.settled and not worker.reading:
                worker.reading = mine.turn = True
        if not mine.settled:
            mine.sleep(mine.deadline - time.monotonic())
            with self._lock:
                out_of_time = not mine.settled
                if out_of_time:
                    mine.give_up()
            if out_of_time:
                self._drop(worker, "no answer in time", stuck=True)
        if mine.failure is not None:
            raise mine.failure
        if mine.answer is not None:
            return mine.answer
        return self._read_until_answered(worker, mine)

    def _read_until_answered(self, worker: Worker, mine: _Request) -> Any:
        retire = False
        try:
            while mine.answer is None:
                answers = worker.read_answers()
                with self._lock:
                    if len(answers) > len(worker.waiting):
                        raise WorkerFailure(f"check worker {worker.pid} answered too much")
                    for answer in answers:
                        request = worker.waiting.popleft()
                        request.answer = answer
                        request.ring()
                        worker.load -= 1
                        worker.answered = True
                        self._make_room()
                    if mine.answer is not None:
                        worker.reading = False
                        if worker.waiting:           # the next in line reads from now on
                            head = worker.waiting[0]
                            worker.reading = head.turn = True
                            head.ring()
                        retire = self._stopped and worker.load == 0 and not worker.dropped
                        if retire:
                            self._forget(worker)
        except WorkerFailure as failure:
            with self._lock:
                worker.reading = False
            self._drop(worker, str(failure))        # unless the watch killed it for time
            raise (mine.failure or failure) from None
        if retire:
            worker.stop()
        return mine.answer

    def _drop(self, worker: Worker, why: str, stuck: bool = False) -> None:
        """Kill a worker that failed, or is `stuck` on the request it works on:
        the oldest it holds, which fails with WorkerTimeout (temperror). Every
        other request it holds fails with WorkerFailure, so that their sessions
        do the check themselves: one queued behind a stuck request is not at
        fault, even when its own time runs out first."""
        with self._lock:
            if worker.dropped:
                return
            worker.dropped = True
            self._forget(worker)
            for position, request in enumerate(worker.waiting):
                request.failure = (WorkerTimeout(why) if stuck and position == 0
                                   else WorkerFailure(f"check worker {worker.pid}: {why}"))
                request.ring()
            worker.waiting.clear()
            worker.load = 0
        worker.kill()
        self._report(worker.pid, why)
        if not stuck and not worker.answered:
            self._note_broken(why)

    def _forget(self, worker: Worker) -> None:
        """Out of the pool (the lock held)."""
        if worker in self._all:
            self._all.remove(worker)
            self._started -= 1
            self._make_room()

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
        """The running workers' process ids (tests)."""
        with self._lock:
            return sorted(worker.pid for worker in self._all)

    def stop(self) -> None:
        """Stop every idle worker (by closing its pipe; killed if it lingers);
        a busy one is stopped when its last answer has been read."""
        with self._lock:
            self._stopped = True
            idle = [worker for worker in self._all if worker.load == 0 and not worker.reading]
            for worker in idle:
                self._forget(worker)
            self._room.notify_all()
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
