"""The queue on disk: commit point, orphans, locking, atomic updates, envelope format."""

from __future__ import annotations

import json
import os
import time

import pytest

from lib.store.spool import Envelope, QueueBusy, Recipient, RecipientState, Spool, new_id

PENDING, DELIVERED, FAILED = RecipientState


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "queue")


def envelope(**changes) -> Envelope:
    values = dict(id=new_id(), sender="a@example.org", created=time.time(),
                  recipients=[Recipient("x@remote.example"), Recipient("y@remote.example")])
    values.update(changes)
    return Envelope(**values)


def enqueue(spool, data=b"Subject: q\n\nbody\n", **changes):
    temp = spool.begin()
    temp.write(data)
    env = envelope(**changes)
    spool.commit(temp, env)
    return env


def test_ids_are_unique_and_ordered():
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids[0][:11] <= ids[-1][:11]


def test_commit_creates_an_entry(spool):
    env = enqueue(spool)
    assert spool.ids() == [env.id]
    loaded = spool.load(env.id)
    assert loaded == env and [r.state for r in loaded.recipients] == [PENDING, PENDING]
    assert spool.message_path(env.id).read_bytes() == b"Subject: q\n\nbody\n"
    assert os.listdir(spool.tmp) == []
    assert oct(os.stat(spool.message_path(env.id)).st_mode & 0o777) == "0o600"


def test_save_replaces_atomically(spool):
    env = enqueue(spool)
    env.recipients[0].state = DELIVERED
    env.recipients[0].attempts = 1
    spool.save(env)
    assert spool.load(env.id).recipients[0].state is DELIVERED
    assert os.listdir(spool.tmp) == []


def test_remove(spool):
    env = enqueue(spool)
    spool.remove(env.id)
    assert spool.ids() == [] and spool.entries() == []


def test_orphans_are_cleaned(spool):
    env = enqueue(spool)
    orphan = spool.entries_dir / "ORPHAN.msg"
    orphan.write_bytes(b"never acknowledged")
    stale = spool.tmp / "stale"
    stale.write_bytes(b"x")
    old = time.time() - 7200
    for path in (orphan, stale):
        os.utime(path, (old, old))
    fresh = spool.tmp / "fresh"
    fresh.write_bytes(b"being written")
    assert spool.clean_orphans() == 2
    assert spool.ids() == [env.id] and fresh.exists()


def test_lock_excludes_a_second_user(spool):
    env = enqueue(spool)
    with spool.locked(env.id):
        with pytest.raises(QueueBusy):
            with spool.locked(env.id):
                pass
    with spool.locked(env.id):
        pass
    spool.remove(env.id)
    with pytest.raises(FileNotFoundError):
        with spool.locked(env.id):
            pass


def test_poke_moves_the_wake_time(spool):
    before = spool.wake_time()
    time.sleep(0.01)
    spool.poke()
    assert spool.wake_time() > before


def test_next_attempt_is_the_earliest_pending(spool):
    env = envelope()
    env.recipients[0].next_attempt = 50
    env.recipients[1].next_attempt = 20
    assert env.next_attempt == 20
    env.recipients[1].state = DELIVERED
    assert env.next_attempt == 50


def test_queue_ids_are_checked(spool):
    for bad in ("../../etc/passwd", "/tmp/x", "1A2B", "1a2283ccf0824984", ""):
        with pytest.raises(ValueError):
            spool.message_path(bad)
        with pytest.raises(ValueError):
            spool.envelope_path(bad)
    assert spool.message_path("1A2283CCF0824984").parent == spool.entries_dir


def test_an_unreadable_envelope_is_quarantined_not_fatal(spool):
    good = enqueue(spool)
    bad = enqueue(spool)
    spool.envelope_path(bad.id).write_bytes(b"{not json")
    assert [e.id for e in spool.entries()] == [good.id]
    assert sorted(os.listdir(spool.root / "bad")) == [f"{bad.id}.env", f"{bad.id}.msg"]
    assert spool.ids() == [good.id]


def test_unknown_envelope_keys_are_ignored(spool):
    env = enqueue(spool)
    data = env.to_json().replace(b'"sender"', b'"from_a_newer_version": 1, "sender"')
    data = data.replace(b'"state"', b'"colour": "blue", "state"', 1)
    spool.envelope_path(env.id).write_bytes(data)
    assert spool.load(env.id).sender == env.sender


def test_half_entries_left_by_a_crash_are_cleaned(spool):
    env = enqueue(spool)
    lonely = new_id()
    (spool.entries_dir / f"{lonely}.env").write_bytes(env.to_json())
    old = time.time() - 7200
    os.utime(spool.entries_dir / f"{lonely}.env", (old, old))
    assert spool.clean_orphans() == 1
    assert spool.ids() == [env.id]


# ---------------------------------------------------------------- envelope format

def test_states_are_typed_in_memory_and_plain_values_on_disk(spool):
    env = enqueue(spool)
    env.recipients[0].state = FAILED
    env.recipients[0].expired = True
    spool.save(env)
    raw = json.loads(spool.envelope_path(env.id).read_bytes())
    assert [r["state"] for r in raw["recipients"]] == ["failed", "pending"]
    assert raw["recipients"][0]["expired"] is True
    loaded = spool.load(env.id)
    assert [r.state for r in loaded.recipients] == [FAILED, PENDING]
    assert all(type(r.state) is RecipientState for r in loaded.recipients)
    assert loaded.pending == [loaded.recipients[1]]


def test_an_envelope_with_an_unknown_state_is_quarantined(spool):
    env = enqueue(spool)
    spool.envelope_path(env.id).write_bytes(
        env.to_json().replace(b'"pending"', b'"lost in space"', 1))
    with pytest.raises(ValueError):
        spool.load(env.id)
    assert spool.entries() == [] and (spool.root / "bad" / f"{env.id}.env").exists()


# Written by the queue of the version before typed results (Envelope.to_json
# of that code, unchanged): free-text last_reply, expiry as a marker in it.
OLD_ENVELOPE = b"""{
 "id": "018C2B3D4E5F0A1B",
 "sender": "alice@example.org",
 "recipients": [
  {
   "address": "later@remote.example",
   "state": "pending",
   "attempts": 2,
   "next_attempt": 1700003600.0,
   "last_reply": "451 4.2.0 try later",
   "original": "",
   "relay": "mx.remote.example[192.0.2.25]:25",
   "reported": false
  },
  {
   "address": "gone@remote.example",
   "state": "failed",
   "attempts": 1,
   "next_attempt": 0.0,
   "last_reply": "550 5.1.1 <gone@remote.example>: no such user",
   "original": "",
   "relay": "mx.remote.example[192.0.2.25]:25",
   "reported": true
  },
  {
   "address": "slow@remote.example",
   "state": "failed",
   "attempts": 9,
   "next_attempt": 0.0,
   "last_reply": "451 4.4.1 cannot connect to mx.slow.example[192.0.2.26]:25: [Errno 111] \
Connection refused (gave up after 5d)",
   "original": "",
   "relay": "none",
   "reported": false
  },
  {
   "address": "friend@remote.example",
   "state": "delivered",
   "attempts": 1,
   "next_attempt": 0.0,
   "last_reply": "250 2.0.0 Ok: queued",
   "original": "fwd@example.org",
   "relay": "mx.remote.example[192.0.2.25]:25",
   "reported": false
  },
  {
   "address": "new@remote.example",
   "state": "pending",
   "attempts": 0,
   "next_attempt": 0.0,
   "last_reply": "",
   "original": "",
   "relay": "",
   "reported": false
  }
 ],
 "created": 1700000000.0,
 "utf8": false,
 "origin": {
  "session": "3F2A9C",
  "client": "192.0.2.1"
 }
}"""


def test_an_envelope_written_by_the_previous_version_loads(spool):
    queue_id = "018C2B3D4E5F0A1B"
    spool.message_path(queue_id).write_bytes(b"Subject: old\n\nbody\n")
    spool.envelope_path(queue_id).write_bytes(OLD_ENVELOPE)
    [envelope] = spool.entries()                      # not quarantined
    later, gone, slow, friend, new = envelope.recipients
    assert (envelope.id, envelope.sender, envelope.created) == \
        (queue_id, "alice@example.org", 1700000000.0)
    assert envelope.origin == {"session": "3F2A9C", "client": "192.0.2.1"}

    assert (later.state, later.attempts, later.next_attempt) == (PENDING, 2, 1700003600.0)
    assert (later.reply_code, later.reply_enhanced, later.reply_text) == \
        (451, "4.2.0", "try later")
    assert later.relay == "mx.remote.example[192.0.2.25]:25" and not later.expired

    assert (gone.state, gone.reported, gone.expired) == (FAILED, True, False)
    assert (gone.reply_code, gone.reply_enhanced, gone.reply_text) == \
        (550, "5.1.1", "<gone@remote.example>: no such user")

    # expiry was a marker at the end of the text: now a flag, and the text without it
    assert (slow.state, slow.expired, slow.reported) == (FAILED, True, False)
    assert (slow.reply_code, slow.reply_enhanced) == (451, "4.4.1")
    assert slow.reply_text.endswith("Connection refused")

    assert (friend.state, friend.reply_code, friend.original) == \
        (DELIVERED, 250, "fwd@example.org")
    assert (new.state, new.attempts, new.reply_code, new.reply_text) == (PENDING, 0, None, "")
    assert envelope.pending == [later, new] and envelope.next_attempt == 0.0

    # saved again, it is written in the new format and reads back the same
    with spool.locked(queue_id):
        spool.save(envelope)
    raw = json.loads(spool.envelope_path(queue_id).read_bytes())
    assert all("last_reply" not in r for r in raw["recipients"])
    assert spool.load(queue_id) == envelope


def test_the_expiry_marker_counts_only_on_a_failed_recipient(spool):
    env = enqueue(spool)
    data = json.loads(env.to_json())
    for item in data["recipients"]:
        for key in ("reply_code", "reply_enhanced", "reply_text", "failure", "expired"):
            del item[key]                             # as the previous version wrote them
        item["last_reply"] = "451 4.2.0 said (gave up after 5d) itself"
    data["recipients"][0]["last_reply"] = "451 4.2.0 says (gave up after 5d)"
    spool.envelope_path(env.id).write_bytes(json.dumps(data).encode())
    first, second = spool.load(env.id).recipients
    assert first.state is PENDING and not first.expired     # a pending one never expired
    assert first.reply_text == "says (gave up after 5d)"
    assert second.reply_text == "said (gave up after 5d) itself"


# ---------------------------------------------------------------- bad entries

def _rewritten(spool, env, where: str, key: str, value) -> None:
    """Write env's envelope with one field changed: of the envelope, or of its
    first recipient (where="recipient"); value=KeyError removes the field."""
    data = json.loads(env.to_json())
    target = data if where == "envelope" else data["recipients"][0]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    spool.envelope_path(env.id).write_text(json.dumps(data))


BAD_FIELDS = [
    ("recipient", "next_attempt", None),         # issue 11: `serve` died with a TypeError
    ("recipient", "next_attempt", "soon"),
    ("recipient", "next_attempt", float("nan")),
    ("recipient", "attempts", "3"),
    ("recipient", "attempts", True),
    ("recipient", "attempts", -1),
    ("recipient", "address", 7),
    ("recipient", "address", KeyError),
    ("recipient", "reply_code", "550"),
    ("recipient", "reply_enhanced", 5.1),
    ("recipient", "expired", "no"),
    ("recipient", "reported", 0),
    ("recipient", "relay", None),
    ("envelope", "created", "yesterday"),          # issue 11: delivered, crashed, again forever
    ("envelope", "created", None),
    ("envelope", "created", KeyError),
    ("envelope", "sender", None),
    ("envelope", "recipients", "x@remote.example"),
    ("envelope", "recipients", ["x@remote.example"]),
    ("envelope", "recipients", []),
    ("envelope", "utf8", "yes"),
    ("envelope", "origin", ["session"]),
    ("envelope", "size", "12"),
    ("envelope", "id", "0000DEADBEEF0000"),          # not the entry's own id
]


@pytest.mark.parametrize(("where", "key", "value"), BAD_FIELDS,
                         ids=[f"{k}={v!r}" for _, k, v in BAD_FIELDS])
def test_an_envelope_field_of_the_wrong_type_quarantines_the_entry(spool, caplog, where, key,
                                                                   value):
    good = enqueue(spool)
    bad = enqueue(spool)
    _rewritten(spool, bad, where, key, value)
    with pytest.raises(ValueError):
        spool.load(bad.id)
    with caplog.at_level("ERROR", logger="mailbox_appliance"):
        assert [e.id for e in spool.entries()] == [good.id]
    assert sorted(os.listdir(spool.root / "bad")) == [f"{bad.id}.env", f"{bad.id}.msg"]
    assert spool.ids() == [good.id] and spool.quarantined() == [bad.id]
    [line] = [r.getMessage() for r in caplog.records]
    assert f"event=quarantined msg={bad.id}" in line and key in line, line


def test_every_envelope_field_that_may_be_missing_gets_its_default(spool):
    """The fields a version added may be absent from what an older one wrote."""
    env = enqueue(spool)
    data = json.loads(env.to_json())
    data = {k: data[k] for k in ("id", "sender", "recipients", "created")}
    data["recipients"] = [{"address": r["address"]} for r in data["recipients"]]
    spool.envelope_path(env.id).write_text(json.dumps(data))
    [loaded] = spool.entries()
    assert loaded.size is None and loaded.utf8 is False and loaded.origin == {}
    assert [(r.state, r.attempts, r.next_attempt) for r in loaded.recipients] == \
        [(PENDING, 0, 0.0), (PENDING, 0, 0.0)]


def test_whole_numbers_are_accepted_where_times_are_kept(spool):
    env = enqueue(spool)
    _rewritten(spool, env, "envelope", "created", 1700000000)
    assert spool.load(env.id).created == 1700000000


def test_the_message_size_is_kept_and_checked_before_delivery(spool):
    env = enqueue(spool, data=b"Subject: q\n\nbody\n")
    loaded = spool.load(env.id)
    assert loaded.size == len(b"Subject: q\n\nbody\n")
    with spool.locked(env.id):
        assert spool.load_for_delivery(env.id) == loaded
    with open(spool.message_path(env.id), "r+b") as handle:     # a truncated message file
        handle.truncate(10)
    with spool.locked(env.id):
        assert spool.load_for_delivery(env.id) is None
    assert spool.ids() == [] and spool.quarantined() == [env.id]


def test_an_envelope_without_a_size_is_delivered_as_it_is(spool):
    """Entries queued by the previous version have no size: unknown, not bad."""
    env = enqueue(spool)
    _rewritten(spool, env, "envelope", "size", KeyError)
    with open(spool.message_path(env.id), "ab") as handle:
        handle.write(b"more\n")
    with spool.locked(env.id):
        loaded = spool.load_for_delivery(env.id)
    assert loaded is not None and loaded.size is None and spool.quarantined() == []


def test_a_bad_entry_that_cannot_be_moved_is_skipped_and_said_so(spool, caplog):
    """`queue list` by a user who may read the queue but not change it."""
    good = enqueue(spool)
    bad = enqueue(spool)
    _rewritten(spool, bad, "envelope", "created", "yesterday")
    (spool.root / "bad").write_text("a file where the folder should be")
    with caplog.at_level("ERROR", logger="mailbox_appliance"):
        assert [e.id for e in spool.entries()] == [good.id]
    assert spool.ids() == [good.id, bad.id]               # left where it was
    assert f"event=quarantine_failed msg={bad.id}" in caplog.text
