"""`queue list`, `queue flush` and `queue remove`: the outbound queue, as the
mail user, while the server runs. Each leaves its lines in the server's log
(a flush or a removal says who did it; a bad entry found is quarantined)."""

from __future__ import annotations

import json
import os
import sys
import time

from ..log.events import EventLog
from ..outbound.results import last_result
from ..session.runtime import load_runtime
from ..store.spool import BAD_DIR, QueueBusy, Recipient, RecipientState, Spool, check_id
from .common import EXIT_FAILURE, EXIT_OK, UsageError, become_mail_user, configured_log


def _open_spool(runtime):
    become_mail_user(runtime)
    return Spool(runtime.config.server.data_dir / "queue")


def cmd_queue(args) -> int:
    runtime = load_runtime(args.config)
    if args.action == "remove":
        if not args.id:
            raise UsageError("queue remove: which entry? (see: queue list)")
        try:
            check_id(args.id)
        except ValueError as error:
            raise UsageError(f"queue remove: {error}") from None
    by = f"uid {os.getuid()}"                 # who ran it, before acting as the mail user
    spool = _open_spool(runtime)
    with configured_log(runtime):
        if args.action == "list":
            return _queue_list(spool, args.json)
        if args.action == "flush":
            return _queue_flush(spool, by)
        return _queue_remove(spool, args.id, by)


def _queue_list(spool: Spool, as_json: bool) -> int:
    now = time.time()
    entries = spool.entries()
    for envelope in entries:
        if as_json:
            print(json.dumps({"id": envelope.id, "age": round(now - envelope.created),
                              "sender": envelope.sender,
                              "created": envelope.created,
                              "recipients": [_recipient_row(r) for r in envelope.recipients]},
                             ensure_ascii=False))
            continue
        age = _human(now - envelope.created)
        print(f"{envelope.id}  age {age}  from <{envelope.sender}>")
        for r in envelope.recipients:
            when = ""
            if r.state == RecipientState.PENDING:
                wait = r.next_attempt - now
                when = "  next try now" if wait <= 0 else f"  next try in {_human(wait)}"
            forward = f" (forward of {r.original})" if r.original else ""
            print(f"    {r.address}{forward}  {r.state.value}  attempts {r.attempts}{when}")
            if last := _last_reply(r):
                relay = f" ({r.relay})" if r.relay and r.relay != "none" else ""
                print(f"        last: {last}{relay}")
    if not as_json:
        print(f"{_entries(len(entries))} in the queue")
    if quarantined := spool.quarantined():
        # --json keeps stdout to one object per entry: the note goes to stderr
        print(f"{_entries(len(quarantined))} quarantined in {spool.root / BAD_DIR} "
              "(the log's event=quarantined lines say why)",
              file=sys.stderr if as_json else sys.stdout)
    return EXIT_OK


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _last_reply(recipient: Recipient) -> str:
    """The last attempt's result as the log showed it; "" before the first."""
    result = last_result(recipient)
    return result.render() if result is not None else ""


def _recipient_row(recipient: Recipient) -> dict:
    """One recipient for `queue list --json`: the fields it always had, then the typed ones."""
    return {"address": recipient.address, "state": recipient.state.value,
            "attempts": recipient.attempts, "next_attempt": recipient.next_attempt,
            "last_reply": _last_reply(recipient), "original": recipient.original,
            "relay": recipient.relay, "reported": recipient.reported,
            "expired": recipient.expired, "reply_code": recipient.reply_code,
            "reply_enhanced": recipient.reply_enhanced, "failure": recipient.failure or None}


def _human(seconds: float) -> str:
    """3599 -> '59m59s', 90000 -> '1d1h': the two largest units."""
    seconds = max(1, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def _queue_flush(spool: Spool, by: str) -> int:
    flushed = busy = 0
    for queue_id in spool.ids():
        try:
            with spool.locked(queue_id):
                envelope = spool.read(queue_id)
                if envelope is None:
                    continue                # bad: quarantined, and logged
                for recipient in envelope.pending:
                    recipient.next_attempt = 0.0
                spool.save(envelope)
                flushed += 1
        except QueueBusy:
            busy += 1                       # being delivered right now anyway
        except FileNotFoundError:
            continue
    spool.poke()
    EventLog("queue").info("flushed", count=flushed, busy=busy or None, by=by)
    print(f"flushed {_entries(flushed)}" + (f"; {busy} being delivered now" if busy else ""))
    return EXIT_OK


def _queue_remove(spool: Spool, queue_id: str, by: str) -> int:
    deadline = time.monotonic() + 60
    while True:
        try:
            with spool.locked(queue_id):
                spool.remove(queue_id)
            EventLog("queue").info("removed", msg=queue_id, by=by)
            print(f"removed {queue_id}")
            return EXIT_OK
        except FileNotFoundError:
            print(f"queue remove: no entry {queue_id} (see: queue list)", file=sys.stderr)
            return EXIT_FAILURE
        except QueueBusy:
            if time.monotonic() > deadline:
                print(f"queue remove: {queue_id} is still being delivered; try again",
                      file=sys.stderr)
                return EXIT_FAILURE
            time.sleep(0.5)
