"""The queue runner started by `serve`: which entries are due, a few delivery
threads, retries on the [relay] schedule, expiry, and the bounces that follow.

Each queue entry is worked on by one thread at a time, under the entry's
lock. Recipients are grouped by next hop; one SMTP transaction per host
carries all of a group's recipients, and every recipient keeps its own reply,
so a 4xx for one retries just that one. 4xx replies and connection failures
are retried on the [relay] retry schedule until give_up_after; 5xx replies,
a null MX and a domain that does not exist fail at once. Failed recipients
are reported to the sender in one DSN, and the entry is removed only after
every recipient is delivered or bounced.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque

from ..config.schema import Config, format_duration
from ..core.errors import PermanentFailure, TemporaryFailure
from ..log.events import EventLog
from ..session.runtime import Runtime
from ..store.spool import DELIVERED, FAILED, PENDING, Envelope, QueueBusy, Recipient
from .client import ConnectionCache, Outcome, transact
from .dsn import GAVE_UP, send_dsn
from .nexthop import Hop, HopFinder

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
                envelope = self.spool.load(queue_id)
                due = [r for r in envelope.pending if r.next_attempt <= time.time()]
                if due:
                    self._deliver(runtime, envelope, due, cache)
                reported = self._report_failures(runtime, envelope)
                unreported = any(r.state == FAILED and not r.reported
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
            key = "smarthost" if runtime.config.relay.mode == "smarthost" and \
                domain not in runtime.config.routes else domain
            groups.setdefault(key, []).append(recipient)
        path = self.spool.message_path(envelope.id)
        for key, recipients in groups.items():
            domain = recipients[0].address.rpartition("@")[2].lower()
            log = self.log.bind(msg=envelope.id)
            try:
                outcome = self._try_hops(runtime, finder.hops(domain), envelope, recipients,
                                         path, log, cache)
            except PermanentFailure as failure:
                outcome = Outcome(replies={r.address: str(failure) for r in recipients},
                                  relay="none")
            except TemporaryFailure as failure:
                outcome = Outcome(replies={r.address: f"451 4.4.1 {failure}"
                                           for r in recipients}, relay="none")
            except Exception as error:       # a bug or the unforeseen: retry, expire, bounce
                log.exception("attempt_failed", to=[r.address for r in recipients])
                outcome = Outcome(replies={r.address: f"451 4.3.0 local error: "
                                           f"{type(error).__name__}: {error}"
                                           for r in recipients}, relay="none")
            self._record(runtime, envelope, recipients, outcome, log)

    def _try_hops(self, runtime, hops: list[Hop], envelope, recipients, path, log,
                  cache: ConnectionCache | None) -> Outcome:
        last = "no host to try"
        sender = envelope.sender
        for hop in hops:
            for address in hop.addresses:
                try:
                    return transact(runtime, hop, address, sender,
                                    [r.address for r in recipients], path, envelope.utf8, cache)
                except TemporaryFailure as failure:
                    last = str(failure)
                    log.info("host_failed", relay=f"{hop.name}[{address}]:{hop.port}",
                             reason=last)
        raise TemporaryFailure(last)

    def _record(self, runtime: Runtime, envelope: Envelope, recipients: list[Recipient],
                outcome: Outcome, log: EventLog) -> None:
        relay = runtime.config.relay
        now = time.time()
        expired = now - envelope.created >= relay.give_up_after
        for recipient in recipients:
            reply = outcome.replies.get(recipient.address, "451 4.3.0 no reply recorded")
            recipient.attempts += 1
            recipient.last_reply = reply
            recipient.relay = outcome.relay
            if reply.startswith("2"):
                recipient.state = DELIVERED
            elif reply.startswith("4") and not expired:
                wait = relay.retry[min(recipient.attempts - 1, len(relay.retry) - 1)]
                # one last try right at the deadline rather than long after it
                recipient.next_attempt = min(now + wait, envelope.created + relay.give_up_after)
            else:
                recipient.state = FAILED
                if reply.startswith("4"):
                    recipient.last_reply = f"{reply} ({GAVE_UP} " \
                                           f"{format_duration(relay.give_up_after)})"
            log.info("attempt", to=recipient.address, relay=outcome.relay,
                     tls=outcome.tls or "no", reply=reply, state=recipient.state
                     if recipient.state != PENDING else "deferred",
                     next=_clock(recipient.next_attempt) if recipient.state == PENDING else None,
                     attempts=recipient.attempts)

    def _report_failures(self, runtime: Runtime, envelope: Envelope) -> bool:
        """A DSN for recipients that failed since the last one: the sender hears
        of a permanent failure now, not when the last retry of the others ends.
        True when recipients were reported; a DSN that could not be written
        (disk full) leaves them to the next attempt."""
        failed = [r for r in envelope.recipients if r.state == FAILED and not r.reported]
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
        self.log.info("done", msg=envelope.id,
                      delivered=sum(r.state == DELIVERED for r in envelope.recipients),
                      failed=sum(r.state == FAILED for r in envelope.recipients))


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
