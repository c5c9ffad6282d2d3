"""Greylisting: deferred until the delay has passed, remembered across a
reopen of the store, forgotten and pruned on time, safe from many threads."""

from __future__ import annotations

import sqlite3
import stat
import threading

import pytest

from lib.checks import greylist
from lib.checks.greylist import Greylist
from lib.checks.verdict import ERROR
from lib.core.replies import GREYLISTED, LOCAL_ERROR
from lib.store import datadir

DELAY = 180.0
CLIENT = "192.0.2.25"
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
DAY = 86400.0


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    made = Greylist(tmp_path, DELAY, clock=clock)
    yield made
    made.close()


def rows(path, table="triplets"):
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_first_attempt_is_deferred_with_the_delay(store):
    result = store.check(CLIENT, SENDER, RECIPIENT)
    assert result.result == greylist.DEFERRED
    assert result.reply == GREYLISTED.fill(seconds=180)
    assert (result.reply.code, result.reply.enhanced) == (451, "4.7.1")


def test_a_retry_before_the_delay_is_told_the_seconds_left(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += 100.5
    assert store.check(CLIENT, SENDER, RECIPIENT).reply == GREYLISTED.fill(seconds=80)


def test_a_retry_after_the_delay_passes_and_is_remembered(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += DELAY
    result = store.check(CLIENT, SENDER, RECIPIENT)
    assert result.result == greylist.PASS and not result.refuses
    clock.now += 20 * DAY
    assert not store.check(CLIENT, SENDER, RECIPIENT).refuses


def test_the_triplet_is_network_sender_and_recipient(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += DELAY
    assert not store.check(CLIENT, SENDER, RECIPIENT).refuses
    assert not store.check("192.0.2.200", SENDER.upper(), RECIPIENT).refuses   # same /24
    assert store.check("192.0.3.25", SENDER, RECIPIENT).refuses                # another /24
    assert store.check(CLIENT, "carol@example.org", RECIPIENT).refuses
    assert store.check(CLIENT, SENDER, "dave@example.net").refuses


def test_ipv6_clients_are_grouped_by_64(store, clock):
    store.check("2001:db8:1:2::5", SENDER, RECIPIENT)
    clock.now += DELAY
    assert not store.check("2001:db8:1:2:ffff::9", SENDER, RECIPIENT).refuses
    assert store.check("2001:db8:1:3::5", SENDER, RECIPIENT).refuses


def test_the_store_survives_a_reopen(tmp_path, clock):
    first = Greylist(tmp_path, DELAY, clock=clock)
    first.check(CLIENT, SENDER, RECIPIENT)
    first.close()
    clock.now += DELAY
    second = Greylist(tmp_path, DELAY, clock=clock)
    try:
        assert not second.check(CLIENT, SENDER, RECIPIENT).refuses
    finally:
        second.close()
    third = Greylist(tmp_path, DELAY, clock=clock)
    try:
        clock.now += DAY
        assert third.check(CLIENT, SENDER, RECIPIENT).result == greylist.PASS
    finally:
        third.close()


def test_an_unretried_first_attempt_is_forgotten(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += greylist.RETRY_WINDOW + 1
    assert store.check(CLIENT, SENDER, RECIPIENT).reply == GREYLISTED.fill(seconds=180)


def test_a_passed_triplet_is_forgotten_after_30_days_unused(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += DELAY
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += 29 * DAY
    assert not store.check(CLIENT, SENDER, RECIPIENT).refuses     # used: 30 days more
    clock.now += 29 * DAY
    assert not store.check(CLIENT, SENDER, RECIPIENT).refuses
    clock.now += 31 * DAY
    assert store.check(CLIENT, SENDER, RECIPIENT).refuses


def test_expired_rows_are_pruned_in_bounded_batches(store, clock, monkeypatch):
    monkeypatch.setattr(greylist, "PRUNE_BATCH", 3)
    for n in range(7):
        store.check(CLIENT, SENDER, f"user{n}@example.net")
    assert rows(store.path) == 7
    clock.now += greylist.RETRY_WINDOW + 1
    store.check(CLIENT, SENDER, "new@example.net")        # prunes 3 of the 7, adds 1
    assert rows(store.path) == 5
    store.check(CLIENT, SENDER, "new@example.net")        # within PRUNE_INTERVAL: no pruning
    assert rows(store.path) == 5
    clock.now += greylist.PRUNE_INTERVAL
    store.check(CLIENT, SENDER, "new@example.net")
    clock.now += greylist.PRUNE_INTERVAL
    store.check(CLIENT, SENDER, "new@example.net")
    assert rows(store.path) == 1                          # only the live one is left


def test_record_false_changes_nothing(store, clock):
    assert store.check(CLIENT, SENDER, RECIPIENT, record=False).refuses
    clock.now += DELAY
    assert store.check(CLIENT, SENDER, RECIPIENT, record=False).refuses
    assert rows(store.path) == 0


def test_spf_passing_for_a_domain_that_passed_before_skips_greylisting(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT, spf_pass=True)
    clock.now += DELAY
    assert not store.check(CLIENT, SENDER, RECIPIENT, spf_pass=True).refuses
    farm = "203.0.113.40"                                 # the same sender, another farm
    skipped = store.check(farm, "carol@example.org", "dave@example.net", spf_pass=True)
    assert not skipped.refuses and "SPF passes for example.org" in skipped.reason
    assert store.check(farm, "carol@example.org", "dave@example.net").refuses   # no SPF pass
    assert store.check(farm, "x@other.example", "dave@example.net", spf_pass=True).refuses


def test_a_domain_that_passed_without_spf_is_not_trusted_later(store, clock):
    store.check(CLIENT, SENDER, RECIPIENT)
    clock.now += DELAY
    store.check(CLIENT, SENDER, RECIPIENT)
    assert store.check("203.0.113.40", SENDER, RECIPIENT, spf_pass=True).refuses


def test_sender_normalisation():
    normal = greylist.normalise_sender
    assert normal("") == "<>"
    assert normal("Alice@Example.ORG") == "alice@example.org"
    assert normal("prvs=4071c4a5e2=alice@example.org") == "alice@example.org"
    assert normal("bounces+12345-678@lists.example") == "bounces+#-#@lists.example"
    assert greylist.client_network("::ffff:192.0.2.25") == "192.0.2.0/24"
    assert greylist.client_network("2001:db8::1") == "2001:db8::/64"


def test_its_files_belong_to_data_dir(store, tmp_path):
    store.check(CLIENT, SENDER, RECIPIENT)
    assert set(greylist.FILES) <= datadir.OWNED_ENTRIES
    assert datadir.refusal(tmp_path) is None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_many_threads_at_once(store):
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def work(n):
        try:
            start.wait()
            for m in range(25):
                assert store.check(f"192.0.{n}.1", SENDER, f"u{m}@example.net").refuses
        except Exception as error:              # an AssertionError or sqlite's: reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert rows(store.path) == 200


def test_a_broken_store_defers_instead_of_accepting(tmp_path, clock):
    (tmp_path / greylist.FILE_NAME).write_bytes(b"this is not a database" * 100)
    broken = Greylist(tmp_path, DELAY, clock=clock)
    result = broken.check(CLIENT, SENDER, RECIPIENT)
    assert result.result == ERROR and result.reply == LOCAL_ERROR
    broken.close()


def test_a_client_that_is_no_address_is_deferred(store):
    assert store.check("nonsense", SENDER, RECIPIENT).reply == LOCAL_ERROR
