"""The queue on disk: commit point, orphans, locking, atomic updates."""

from __future__ import annotations

import os
import time

import pytest

from lib.store.spool import PENDING, Envelope, QueueBusy, Recipient, Spool, new_id


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
    env.recipients[0].state = "delivered"
    env.recipients[0].attempts = 1
    spool.save(env)
    assert spool.load(env.id).recipients[0].state == "delivered"
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
    env.recipients[1].state = "delivered"
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
