"""The queue runner started by `serve`: which entries are due, a few delivery
threads, retries on the [relay] schedule, expiry, and the bounces that follow.

Each queue entry is worked on by one thread at a time, under the entry's
lock. Recipients are grouped by next hop; one SMTP transaction per host
carries all of a group's recipients, and every recipient keeps its own
result, so a 4xx for one retries just that one. Transient results (4xx,
connection failures) are retried until give_up_after; 5xx replies, a null
MX and a domain that does not exist fail at once. Failed recipients are
reported to the sender in one DSN, and the entry is removed only after
every recipient is delivered or bounced. An entry whose envelope is bad or
whose message file changed size since it was queued is moved to queue/bad/
(Spool.load_for_delivery), never sent or retried.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from pathlib import Path

from ..config.schema import Config
from ..log.events import EventLog
from ..session.runtime import Runtime
from ..store.spool import Envelope, QueueBusy, Recipient, RecipientState
from .client import ConnectionCache, Outcome, transact
from .dsn import send_dsn
from .nexthop import Hop, HopFinder
from .results import AttemptFailed, FailureKind, HostFailure, Result, record

WORKERS = 8                   # delivery threads: most of their time is waiting for remote hosts
RESCAN_SECONDS = 30.0         # look at the whole queue at least this often
DSN_RETRY = 60.0              # seconds before trying again a bounce that could not be written


class QueueRunner:
    """Delivers due queue entries with a few threads; wakes when mail is queued."""

    def __init__(self, app, workers: int = WORKERS):
        """`app` gives the current Runtime (`app.runtime`, swapped on reload) and
        the Services (`app.services`)."""
        self.app = app
        self.spool = app.services.spool
        self.log = EventLog("delivery")
        self._workers = workers
        self._lock = threading.Condition()
        self._due: list[tuple[float, str]] = []       # heap of (when, id) still to come
        self._ready: deque[tuple[float, str]] = deque()   # (when, id) whose time has come
        self._scheduled: dict[str, float] = {}
        self._busy: set[str] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_rescan = 0.0
        self._wake_mtime = 0.0
        self._finder: HopFinder | None = None      # made again when a reload brings a config

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self.spool.notify = self.enqueued
        self.rescan()
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"delivery-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watcher = threading.Thread(target=self._watch, name="queue-watch", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def enqueued(self, queue_id: str) -> None:
        """A new entry was committed in this process: deliver it now."""
        self._schedule(queue_id, 0.0)

    def rescan(self) -> None:
        """Read every envelope and schedule it (at start, on `queue flush`, now and then)."""
        self._last_rescan = time.monotonic()
        for envelope in self.spool.entries():
            if envelope.pending:
                self._schedule(envelope.id, envelope.next_attempt)

    def _schedule(self, queue_id: str, when: float) -> None:
        with self._lock:
            if self._scheduled.get(queue_id, float("inf")) <= when:
                return                            # already due as early or earlier
            self._scheduled[queue_id] = when
            if when <= time.time():
                self._ready.append((when, queue_id))
            else:
                heapq.heappush(self._due, (when, queue_id))
            self._lock.notify()

    def _watch(self) -> None:
        """Notice `queue flush` and `sendmail` from other processes (the wake file)."""
        while not self._stopping.wait(1.0):
            mtime = self.spool.wake_time()
            if mtime != self._wake_mtime or time.monotonic() - self._last_rescan > RESCAN_SECONDS:
                self._wake_mtime = mtime
                try:
                    self.rescan()
                except Exception:            # the watcher must outlive any one bad look
                    self.log.exception("rescan_failed")

    def _next(self) -> str | None:
        """The next due entry, marked busy; None after a second with nothing due."""
        with self._lock:
            now = time.time()
            while self._due and self._due[0][0] <= now:   # their time has come
                self._ready.append(heapq.heappop(self._due))
            while self._ready:
                when, queue_id = self._ready.popleft()
                if self._scheduled.get(queue_id) != when:
                    continue                      # superseded by an earlier schedule
                del self._scheduled[queue_id]
                if queue_id in self._busy:
                    continue                      # its worker reschedules it when done
                self._busy.add(queue_id)
                self._update_flow()
                return queue_id
            wait = (self._due[0][0] - now) if self._due else 1.0
            self._lock.wait(min(max(wait, 0.01), 1.0))
            return None

    def _update_flow(self) -> None:
        """Tell the intake how far delivery lags: entries due and not taken, and
        entries in flight. (Called with the lock held.)"""
        self.app.services.flow.update(len(self._ready) + len(self._busy))

    def _work(self) -> None:
        cache = ConnectionCache()
        try:
            self._work_with(cache)
        finally:
            cache.close()

    def _work_with(self, cache: ConnectionCache) -> None:
        while not self._stopping.is_set():
            queue_id = self._next()
            if queue_id is None:
                cache.expire()
                continue
            try:
                when = self.attempt(queue_id, cache)
            except Exception:
                self.log.exception("attempt_crashed", msg=queue_id)
                when = time.time() + 60.0
            finally:
                with self._lock:
                    self._busy.discard(queue_id)
                    self._update_flow()
            if when is not None:
                self._schedule(queue_id, when)

    # ------------------------------------------------------------ one entry

    def attempt(self, queue_id: str, cache: ConnectionCache | None = None) -> float | None:
        """Try every due recipient of one entry; return when to look again (None: done)."""
        runtime = self.app.runtime
        try:
            with self.spool.locked(queue_id):
                envelope = self.spool.load_for_delivery(queue_id)
                if envelope is None:
                    return None                  # quarantined: for the admin to look at
                due = [r for r in envelope.pending if r.next_attempt <= time.time()]
                if due:
                    self._deliver(runtime, envelope, due, cache)
                reported = self._report_failures(runtime, envelope)
                unreported = any(r.state == RecipientState.FAILED and not r.reported
                                 for r in envelope.recipients)
                if not envelope.pending and not unreported:
                    self._finish(envelope)       # a finished entry goes without a last save
                    return None
                if due or reported or unreported:
                    self.spool.save(envelope)
                if envelope.pending:
                    return envelope.next_attempt
                return time.time() + DSN_RETRY     # only a bounce left to send
        except QueueBusy:
            return time.time() + 5.0           # `queue remove` or another process has it
        except FileNotFoundError:
            return None                        # removed meanwhile

    def _hop_finder(self, config: Config) -> HopFinder:
        finder = self._finder
        if finder is None or finder.config is not config:
            finder = self._finder = HopFinder(config)
        return finder

    def _deliver(self, runtime: Runtime, envelope: Envelope, due: list[Recipient],
                 cache: ConnectionCache | None) -> None:
        finder = self._hop_finder(runtime.config)
        groups: dict[str, list[Recipient]] = {}
        for recipient in due:
            domain = recipient.address.rpartition("@")[2].lower()
            key = "smarthost" if finder.via_smarthost(domain) else domain
            groups.setdefault(key, []).append(recipient)
        path = self.spool.message_path(envelope.id)
        log = self.log.bind(msg=envelope.id)
        for recipients in groups.values():
            domain = recipients[0].address.rpartition("@")[2].lower()
            try:
                outcome = self._try_hops(runtime, finder.hops(domain), envelope, recipients,
                                         path, log, cache)
            except AttemptFailed as failure:      # no host to try (DNS, null MX ...)
                outcome = _for_all(recipients, failure.result)
            except Exception:           # a bug or the unforeseen: retry, expire, bounce
                log.exception("attempt_failed", to=[r.address for r in recipients])
                outcome = _for_all(recipients, HostFailure(
                    FailureKind.LOCAL, f"local error at {runtime.hostname}; "
                                       "its log has the details"))
            self._record(runtime, envelope, recipients, outcome, log)

    def _try_hops(self, runtime: Runtime, hops: list[Hop], envelope: Envelope,
                  recipients: list[Recipient], path: Path, log: EventLog,
                  cache: ConnectionCache | None) -> Outcome:
        """The outcome at the first host that could be used; when none could, the
        last host's failure for every recipient, with that host as the relay."""
        last: Result = HostFailure(FailureKind.DNS, "no host to try")
        tried = "none"
        for hop in hops:
            for address in hop.addresses:
                try:
                    return transact(runtime, hop, address, envelope.sender,
                                    [r.address for r in recipients], path, envelope.utf8, cache)
                except AttemptFailed as failure:
                    last = failure.result
                    tried = f"{hop.name}[{address}]:{hop.port}"
                    log.info("host_failed", relay=tried, reason=last.describe())
        return _for_all(recipients, last, tried)

    def _record(self, runtime: Runtime, envelope: Envelope, recipients: list[Recipient],
                outcome: Outcome, log: EventLog) -> None:
        relay = runtime.config.relay
        now = time.time()
        expired = now - envelope.created >= relay.give_up_after
        for recipient in recipients:
            result = outcome.results.get(recipient.address) or \
                HostFailure(FailureKind.LOCAL, "no reply was recorded")
            recipient.attempts += 1
            record(recipient, result)
            recipient.relay = outcome.relay
            if result.success:
                recipient.state = RecipientState.DELIVERED
            elif result.permanent or expired:
                recipient.state = RecipientState.FAILED
                recipient.expired = not result.permanent
            else:
                wait = relay.retry[min(recipient.attempts - 1, len(relay.retry) - 1)]
                # one last try right at the deadline rather than long after it
                recipient.next_attempt = min(now + wait, envelope.created + relay.give_up_after)
            pending = recipient.state == RecipientState.PENDING
            log.info("attempt", to=recipient.address, relay=outcome.relay,
                     tls=outcome.tls or "no", verified="yes" if outcome.verified else "no",
                     reply=result.render(),
                     state="deferred" if pending else recipient.state.value,
                     next=_clock(recipient.next_attempt) if pending else None,
                     attempts=recipient.attempts)

    def _report_failures(self, runtime: Runtime, envelope: Envelope) -> bool:
        """A DSN for recipients that failed since the last one: the sender hears
        of a permanent failure now, not when the last retry of the others ends.
        True when recipients were reported; a DSN that could not be written
        (disk full) leaves them to the next attempt."""
        failed = [r for r in envelope.recipients
                  if r.state == RecipientState.FAILED and not r.reported]
        if not failed:
            return False
        if envelope.sender:
            try:
                send_dsn(runtime, self.app.services, envelope, failed,
                         self.spool.message_path(envelope.id))
            except Exception:
                self.log.exception("bounce_failed", msg=envelope.id)
                return False
        else:
            self.log.info("no_bounce", msg=envelope.id,
                          reason="null sender: a bounce is never bounced")
        for recipient in failed:
            recipient.reported = True
        return True

    def _finish(self, envelope: Envelope) -> None:
        """Every recipient is delivered or reported: the entry goes."""
        self.spool.remove(envelope.id)
        states = [r.state for r in envelope.recipients]
        self.log.info("done", msg=envelope.id, delivered=states.count(RecipientState.DELIVERED),
                      failed=states.count(RecipientState.FAILED))


def _for_all(recipients: list[Recipient], result: Result, relay: str = "none") -> Outcome:
    """One result for every recipient, when no host gave any: `relay` is the
    last host tried ("none" when there was none to try, e.g. DNS failed)."""
    return Outcome(relay, results={r.address: result for r in recipients})


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
