"""`queue list`, `queue flush` and `queue remove`: the outbound queue, as the
mail user, while the server runs."""

from __future__ import annotations

import json
import sys
import time

from ..outbound.results import last_result
from ..session.runtime import load_runtime
from ..store.spool import QueueBusy, Recipient, RecipientState, Spool, check_id
from .common import EXIT_FAILURE, EXIT_OK, UsageError, become_mail_user


def _open_spool(runtime):
    become_mail_user(runtime)
    return Spool(runtime.config.server.data_dir / "queue")


def cmd_queue(args) -> int:
    runtime = load_runtime(args.config)
    spool = _open_spool(runtime)
    if args.action == "list":
        return _queue_list(spool, args.json)
    if args.action == "flush":
        return _queue_flush(spool)
    if not args.id:
        raise UsageError("queue remove: which entry? (see: queue list)")
    return _queue_remove(spool, args.id)


def _queue_list(spool, as_json: bool) -> int:
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
            print(f"    {r.address}  {r.state.value}  attempts {r.attempts}{when}")
            if last := _last_reply(r):
                relay = f" ({r.relay})" if r.relay and r.relay != "none" else ""
                print(f"        last: {last}{relay}")
    if not as_json:
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in the queue")
    return EXIT_OK


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


def _queue_flush(spool) -> int:
    flushed = busy = 0
    for queue_id in spool.ids():
        try:
            with spool.locked(queue_id):
                envelope = spool.load(queue_id)
                for recipient in envelope.pending:
                    recipient.next_attempt = 0.0
                spool.save(envelope)
                flushed += 1
        except QueueBusy:
            busy += 1                       # being delivered right now anyway
        except FileNotFoundError:
            continue
    spool.poke()
    print(f"flushed {flushed} entr{'y' if flushed == 1 else 'ies'}"
          + (f"; {busy} being delivered now" if busy else ""))
    return EXIT_OK


def _queue_remove(spool, queue_id: str) -> int:
    try:
        check_id(queue_id)
    except ValueError as error:
        raise UsageError(f"queue remove: {error}") from None
    deadline = time.monotonic() + 60
    while True:
        try:
            with spool.locked(queue_id):
                spool.remove(queue_id)
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
