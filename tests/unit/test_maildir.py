"""Maildir store: durable multi-mailbox delivery, names with sizes, POP3 snapshots, locks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from lib.core.durable import DirSyncer
from lib.store.maildir import MailboxBusy, MaildirStore, pop3_size_of_file


@pytest.fixture
def store(tmp_path):
    return MaildirStore(tmp_path / "mail", hostname="mail.example.org")


def files(path):
    return sorted(os.listdir(path))


def test_deliver_to_several_mailboxes(store):
    names = store.deliver(["bhayden", "alice", "bhayden"], b"Subject: hi\r\n\r\nbody\r\n")
    assert set(names) == {"bhayden", "alice"}
    for mailbox in ("bhayden", "alice"):
        base = store.path(mailbox)
        assert files(base / "new") == [names[mailbox]]
        assert files(base / "tmp") == []            # nothing left behind
        assert (base / "new" / names[mailbox]).read_bytes() == b"Subject: hi\n\nbody\n"
    # one file, hard-linked: written once
    a = os.stat(store.path("alice") / "new" / names["alice"])
    b = os.stat(store.path("bhayden") / "new" / names["bhayden"])
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def test_name_records_file_size_and_crlf_size(store):
    body = b"Subject: sizes\r\n\r\n" + b"line\r\n" * 50 + b"no final newline"
    name = store.deliver(["alice"], body)["alice"]
    stored = (store.path("alice") / "new" / name).read_bytes()
    assert b"\r" not in stored and stored.endswith(b"\n")
    crlf = stored.replace(b"\n", b"\r\n")
    assert name.endswith(f",S={len(stored)},W={len(crlf)}")
    assert crlf == body + b"\r\n"                   # the missing final CRLF is added


def test_bare_cr_is_dropped_and_bare_lf_kept_as_line_end(store):
    name = store.deliver(["alice"], [b"a\rb\nc\r", b"\nd\r\n"])["alice"]
    assert (store.path("alice") / "new" / name).read_bytes() == b"ab\nc\nd\n"


def test_maildirs_are_private(store):
    store.deliver(["alice"], b"x\n")
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(store.path("alice") / sub).st_mode) == 0o700
    name = files(store.path("alice") / "new")[0]
    assert stat.S_IMODE(os.stat(store.path("alice") / "new" / name).st_mode) == 0o600


def test_unsafe_mailbox_names_are_refused(store):
    for name in ("../etc", "a/b", ".", "..", ""):
        with pytest.raises(ValueError):
            store.path(name)


def test_names_unique_under_concurrency(store):
    per_thread, threads = 150, 8
    results: list[str] = []
    lock = threading.Lock()

    def work():
        for i in range(per_thread):
            name = store.deliver(["alice"], b"m %d\n" % i)["alice"]
            with lock:
                results.append(name)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(results) == per_thread * threads
    assert len(set(results)) == len(results)
    assert len(files(store.path("alice") / "new")) == len(results)
    assert files(store.path("alice") / "tmp") == []


def test_discarded_temp_leaves_nothing(store):
    temp = store.begin("alice")
    temp.write(b"partial")
    temp.discard()
    assert files(store.path("alice") / "tmp") == []
    assert files(store.path("alice") / "new") == []


def test_failed_commit_removes_temp_and_acknowledges_nothing(store):
    temp = store.begin("alice")
    temp.write(b"data\n")
    with pytest.raises(ValueError):
        store.commit(temp, ["../escape"])
    assert files(store.path("alice") / "tmp") == []


def test_snapshot_sizes_uids_and_order(store):
    first = store.deliver(["alice"], b"one\r\n")["alice"]
    time.sleep(0.002)
    second = store.deliver(["alice"], b"two\r\ntwo\r\n")["alice"]
    snap = store.snapshot("alice")
    assert [m.size for m in snap] == [5, 10]
    assert [m.uid for m in snap] == [first.split(",")[0], second.split(",")[0]]
    assert all(0x21 <= ord(c) <= 0x7E for m in snap for c in m.uid)
    assert all(len(m.uid) <= 70 for m in snap)


def test_snapshot_reads_sizes_of_foreign_files(store):
    store.ensure("alice")
    new = store.path("alice") / "new"
    samples = {
        "100.foreign1.host": b"crlf\r\nlines\r\n",
        "101.foreign2.host": b"lf\nlines\n",
        "102.foreign3.host": b"mixed\r\nlf\nno end",
        "103.foreign4.host": b"",
    }
    for name, data in samples.items():
        (new / name).write_bytes(data)
    snap = {m.uid: m for m in store.snapshot("alice")}
    assert snap["100.foreign1.host"].size == len(b"crlf\r\nlines\r\n")
    assert snap["101.foreign2.host"].size == len(b"lf\r\nlines\r\n")
    assert snap["102.foreign3.host"].size == len(b"mixed\r\nlf\r\nno end\r\n")
    assert snap["103.foreign4.host"].size == 0
    assert all(m.crlf for m in snap.values())


def test_long_or_odd_names_get_hashed_uids(store):
    store.ensure("alice")
    (store.path("alice") / "new" / ("1." + "x" * 100)).write_bytes(b"a\n")
    (store.path("alice") / "cur" / "2.has space:2,S").write_bytes(b"b\n")
    uids = [m.uid for m in store.snapshot("alice")]
    assert len(uids) == 2 and len(set(uids)) == 2
    assert all(len(u) <= 70 and " " not in u for u in uids)


def test_mark_seen_keeps_uid_and_moves_to_cur(store):
    store.deliver(["alice"], b"x\n")
    (message,) = store.snapshot("alice")
    store.mark_seen(message)
    assert files(store.path("alice") / "new") == []
    (moved,) = files(store.path("alice") / "cur")
    assert moved.endswith(":2,S")
    (again,) = store.snapshot("alice")
    assert again.uid == message.uid and again.size == message.size
    with store.open(message) as handle:           # the old path still finds it
        assert handle.read() == b"x\n"


def test_delete(store):
    store.deliver(["alice"], b"x\n")
    (message,) = store.snapshot("alice")
    store.delete(message)
    store.sync("alice")
    assert store.snapshot("alice") == []


def test_lock_is_exclusive_and_released(store):
    lock = store.lock("alice")
    with pytest.raises(MailboxBusy):
        store.lock("alice")
    store.lock("bhayden").release()                 # other mailboxes are free
    lock.release()
    store.lock("alice").release()


def test_lock_of_a_killed_process_is_released(store, tmp_path):
    store.ensure("alice")
    script = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(store.path('alice') / '.pop3.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(MailboxBusy):
            store.lock("alice")
    finally:
        holder.kill()
        holder.wait(10)
    store.lock("alice").release()


def test_stale_temps_are_cleaned(store):
    temp = store.begin("alice")
    temp.write(b"x")
    temp.close()
    old = time.time() - 40 * 3600
    os.utime(temp.path, (old, old))
    fresh = store.begin("alice")
    assert store.clean_stale_temps() == 1
    assert files(store.path("alice") / "tmp") == [os.path.basename(fresh.path)]
    fresh.discard()


def test_pop3_size_of_file_matches_conversion(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"a\r\nb\nc")
    assert pop3_size_of_file(path) == len(b"a\r\nb\r\nc\r\n")


def test_dir_syncer_shares_fsyncs_and_survives_errors(tmp_path):
    syncer = DirSyncer()
    errors = []

    def work():
        try:
            for _ in range(20):
                syncer.sync(tmp_path)
        except Exception as error:       # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors and not any(worker.is_alive() for worker in workers)
    with pytest.raises(FileNotFoundError):
        syncer.sync(tmp_path / "missing")
    syncer.sync(tmp_path)      # a failure leaves the syncer usable


def test_numbering_follows_delivery_order_within_a_second(store):
    store.ensure("alice")
    names = ["1700000000.M99999P7Q1.h", "1700000000.M100000P7Q2.h",
             "1700000000.M100000P7Q10.h", "1700000001.M5P7Q3.h"]
    for name in reversed(names):
        (store.path("alice") / "new" / name).write_bytes(b"x\n")
    assert [m.path.name for m in store.snapshot("alice")] == names


def test_our_names_carry_zero_padded_microseconds(store):
    name = store.deliver(["alice"], b"x\n")["alice"]
    micros = name.split(".M", 1)[1].split("P", 1)[0]
    assert len(micros) == 6 and micros.isdigit()


def test_unchanged_folders_are_listed_once(store, monkeypatch):
    for n in range(3):
        store.deliver(["alice"], b"m%d\n" % n)
    new = store.path("alice") / "new"
    old = time.time() - 60
    os.utime(new, (old, old))                   # left alone for a minute: cacheable
    first = store.snapshot("alice")
    calls = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: calls.append(path) or real_listdir(path))
    assert store.snapshot("alice") == first
    assert str(new) not in calls                 # served from the cache
    store.deliver(["alice"], b"fresh\n")         # changes new/'s mtime
    again = store.snapshot("alice")
    assert len(again) == 4 and str(new) in calls
    assert again[:3] == first


def test_recently_changed_folders_are_not_cached(store):
    store.deliver(["alice"], b"one\n")
    assert len(store.snapshot("alice")) == 1
    (store.path("alice") / "new" / "1.M1P1Q1.other").write_bytes(b"two\n")
    assert len(store.snapshot("alice")) == 2
