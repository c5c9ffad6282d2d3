"""The queue runner without remote hosts: what each result does to a recipient
(delivered, retried, failed, expired), bounces that cannot be written, bad
entries and truncated messages (quarantined, never sent), what the log says
of each attempt, and the backlog told to the intake."""

from __future__ import annotations

import json
import logging
import time

import pytest

from lib.outbound import runner as runner_module
from lib.outbound.client import Outcome
from lib.outbound.nexthop import Hop
from lib.outbound.results import AttemptFailed, FailureKind, HostFailure, RemoteReply
from lib.store.spool import Envelope, Recipient, RecipientState, new_id

from ..support import BASE_INI, ini

RELAY = "mx[127.0.0.1]:9"


class App:
    """What the queue runner needs from the daemon."""

    def __init__(self, runtime, services):
        self.runtime = runtime
        self.services = services


@pytest.fixture
def runner(tmp_path):
    from lib.session.runtime import Services, load_runtime
    path = tmp_path / "d.ini"
    path.write_text(ini(BASE_INI + "\n[routes]\nremote.example = 127.0.0.1:9\n"
                                   "[relay]\nretry = 10m\ngive_up_after = 1h\n"))
    runtime = load_runtime(path)
    return runner_module.QueueRunner(App(runtime, Services.create(runtime.config)))


def queue_one(runner, *recipients, age: float = 0.0) -> str:
    temp = runner.spool.begin()
    temp.write(b"Subject: out\n\nbody\n")
    envelope = Envelope(new_id(), "alice@example.org", [Recipient(r) for r in recipients],
                        time.time() - age)
    return runner.spool.commit(temp, envelope, announce=False)


def answering(monkeypatch, results: dict, sent: list | None = None):
    """Every transaction gets `results` (address -> result)."""
    def transact(runtime, hop, address, sender, recipients, path, utf8, cache=None):
        if sent is not None:
            sent.extend(recipients)
        return Outcome(RELAY, results={r: results[r] for r in recipients})
    monkeypatch.setattr(runner_module, "transact", transact)


def bounced(monkeypatch) -> list:
    bounces: list = []
    monkeypatch.setattr(runner_module, "send_dsn", lambda *a: bounces.append(a[3]) or "DSN")
    return bounces


def test_a_bounce_that_cannot_be_written_is_retried_without_delivering_again(runner,
                                                                            monkeypatch):
    sent: list = []
    answering(monkeypatch, {"good@remote.example": RemoteReply(250, "2.0.0", "ok"),
                            "bad@remote.example": RemoteReply(550, "5.1.1", "no such user")},
              sent)

    def disk_full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runner_module, "send_dsn", disk_full)
    queue_id = queue_one(runner, "good@remote.example", "bad@remote.example")
    when = runner.attempt(queue_id)
    assert when is not None and sent == ["good@remote.example", "bad@remote.example"]
    saved = {r.address: (r.state, r.reported) for r in runner.spool.load(queue_id).recipients}
    assert saved == {"good@remote.example": (RecipientState.DELIVERED, False),
                     "bad@remote.example": (RecipientState.FAILED, False)}
    bounces = bounced(monkeypatch)
    assert runner.attempt(queue_id) is None                  # reported, entry gone
    assert [r.address for r in bounces[0]] == ["bad@remote.example"]
    assert sent == ["good@remote.example", "bad@remote.example"]   # nobody twice
    assert runner.spool.ids() == []


def test_a_transient_result_is_retried_with_its_fields_kept(runner, monkeypatch):
    answering(monkeypatch, {"later@remote.example": RemoteReply(451, "4.2.0", "try later")})
    bounces = bounced(monkeypatch)
    queue_id = queue_one(runner, "later@remote.example")
    started = time.time()
    when = runner.attempt(queue_id)
    [later] = runner.spool.load(queue_id).recipients
    assert later.state is RecipientState.PENDING and not later.expired
    assert (later.reply_code, later.reply_enhanced, later.reply_text, later.failure) == \
        (451, "4.2.0", "try later", "")
    assert later.relay == RELAY and later.attempts == 1
    assert started + 600 <= later.next_attempt == when <= time.time() + 600   # retry = 10m
    assert bounces == []


def test_a_transient_result_after_give_up_after_expires(runner, monkeypatch):
    failure = HostFailure(FailureKind.TIMEOUT, "could not connect to [127.0.0.1]: timed out")
    answering(monkeypatch, {"slow@remote.example": failure,
                            "gone@remote.example": RemoteReply(550, "5.1.1", "gone")})
    bounces = bounced(monkeypatch)
    queue_id = queue_one(runner, "slow@remote.example", "gone@remote.example", age=3601)
    assert runner.attempt(queue_id) is None
    [reported] = bounces
    slow, gone = reported
    assert (slow.state, slow.expired, slow.failure) == (RecipientState.FAILED, True, "timeout")
    assert slow.reply_text == failure.description          # the text is not touched
    assert (gone.state, gone.expired) == (RecipientState.FAILED, False)   # refused, not expired


def test_a_local_error_is_retried_and_never_shows_its_exception(runner, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("secret internals")
    monkeypatch.setattr(runner_module, "transact", broken)
    queue_id = queue_one(runner, "x@remote.example")
    with caplog.at_level(logging.ERROR, logger="mailbox_appliance"):
        runner.attempt(queue_id)
    [recipient] = runner.spool.load(queue_id).recipients
    assert recipient.state is RecipientState.PENDING and recipient.failure == "local"
    assert (recipient.reply_code, recipient.reply_enhanced) == (451, "4.3.0")
    assert "KeyError" not in recipient.reply_text and "secret" not in recipient.reply_text
    assert "event=attempt_failed" in caplog.text and "KeyError" in caplog.text   # the log has it


def test_the_last_hosts_failure_is_what_the_recipients_get(runner, monkeypatch, caplog):
    failures = iter([
        HostFailure(FailureKind.REFUSED, "could not connect to [127.0.0.1]: connection refused"),
        HostFailure(FailureKind.TLS, "TLS with [::1] failed (WRONG_VERSION_NUMBER)")])

    def unusable(*args, **kwargs):
        raise AttemptFailed(next(failures))
    monkeypatch.setattr(runner_module, "transact", unusable)
    finder = runner._hop_finder(runner.app.runtime.config)
    monkeypatch.setattr(finder, "hops", lambda domain: [
        Hop("127.0.0.1", ("127.0.0.1", "::1"), 9, "route")])
    queue_id = queue_one(runner, "x@remote.example")
    with caplog.at_level(logging.INFO, logger="mailbox_appliance"):
        runner.attempt(queue_id)
    [recipient] = runner.spool.load(queue_id).recipients
    assert (recipient.failure, recipient.relay) == ("tls", "127.0.0.1[::1]:9")
    assert recipient.reply_text == "TLS with [::1] failed (WRONG_VERSION_NUMBER)"
    host_failed = [line for line in caplog.text.splitlines() if "event=host_failed" in line]
    assert len(host_failed) == 2 and "connection refused" in host_failed[0]


def test_a_deferred_attempt_logs_the_host_that_was_tried(runner, monkeypatch, caplog):
    """Issue 10: relay=none while the failure named the host."""
    def refused(*args, **kwargs):
        raise AttemptFailed(HostFailure(
            FailureKind.REFUSED, "could not connect to mx.remote.example [127.0.0.2]: "
                                 "connection refused"))
    monkeypatch.setattr(runner_module, "transact", refused)
    finder = runner._hop_finder(runner.app.runtime.config)
    monkeypatch.setattr(finder, "hops", lambda domain: [
        Hop("mx.remote.example", ("127.0.0.2",), 25, "mx")])
    queue_id = queue_one(runner, "x@remote.example")
    with caplog.at_level(logging.INFO, logger="mailbox_appliance"):
        runner.attempt(queue_id)
    [line] = [line for line in caplog.text.splitlines() if "event=attempt " in line]
    assert "relay=mx.remote.example[127.0.0.2]:25 " in line and "state=deferred" in line, line


def test_no_host_to_try_logs_relay_none(runner, monkeypatch, caplog):
    finder = runner._hop_finder(runner.app.runtime.config)

    def no_dns(domain):
        raise AttemptFailed(HostFailure(FailureKind.DNS, "DNS look-up of x MX timed out"))
    monkeypatch.setattr(finder, "hops", no_dns)
    queue_id = queue_one(runner, "x@remote.example")
    with caplog.at_level(logging.INFO, logger="mailbox_appliance"):
        runner.attempt(queue_id)
    [line] = [line for line in caplog.text.splitlines() if "event=attempt " in line]
    assert "relay=none " in line, line
    assert runner.spool.load(queue_id).recipients[0].relay == "none"


# ---------------------------------------------------------------- bad entries

def rewrite(runner, queue_id: str, change) -> None:
    """Edit an entry's envelope JSON in place with `change(data)`."""
    path = runner.spool.envelope_path(queue_id)
    data = json.loads(path.read_bytes())
    change(data)
    path.write_text(json.dumps(data))


def test_an_envelope_with_a_bad_creation_time_is_quarantined_before_sending(runner, monkeypatch):
    """Issue 11: "created": "yesterday" was delivered, crashed, and delivered again."""
    sent: list = []
    answering(monkeypatch, {"x@remote.example": RemoteReply(250, "2.0.0", "ok")}, sent)
    queue_id = queue_one(runner, "x@remote.example")
    rewrite(runner, queue_id, lambda data: data.update(created="yesterday"))
    assert runner.attempt(queue_id) is None
    assert sent == []
    assert runner.spool.ids() == [] and runner.spool.quarantined() == [queue_id]


def test_a_rescan_moves_a_bad_entry_aside_and_schedules_the_others(runner):
    """Issue 11: "next_attempt": null made `serve` exit with a TypeError at every start."""
    good = queue_one(runner, "x@remote.example")
    bad = queue_one(runner, "y@remote.example")
    rewrite(runner, bad, lambda data: data["recipients"][0].update(next_attempt=None))
    runner.rescan()
    assert runner._next() == good and runner._scheduled == {}         # the bad one is not due
    assert runner.spool.quarantined() == [bad]


def test_a_truncated_message_file_is_quarantined_not_sent(runner, monkeypatch, caplog):
    sent: list = []
    answering(monkeypatch, {"x@remote.example": RemoteReply(250, "2.0.0", "ok")}, sent)
    queue_id = queue_one(runner, "x@remote.example")
    path = runner.spool.message_path(queue_id)
    path.write_bytes(path.read_bytes()[:9])                     # "Subject: "
    with caplog.at_level(logging.ERROR, logger="mailbox_appliance"):
        assert runner.attempt(queue_id) is None
    assert sent == [] and runner.spool.quarantined() == [queue_id]
    [line] = [line for line in caplog.text.splitlines() if "event=quarantined" in line]
    assert f"msg={queue_id}" in line and "9 octets" in line and "19 octets" in line, line


def test_an_entry_queued_before_sizes_were_recorded_is_delivered(runner, monkeypatch):
    sent: list = []
    answering(monkeypatch, {"x@remote.example": RemoteReply(250, "2.0.0", "ok")}, sent)
    queue_id = queue_one(runner, "x@remote.example")
    rewrite(runner, queue_id, lambda data: data.pop("size"))
    assert runner.attempt(queue_id) is None
    assert sent == ["x@remote.example"] and runner.spool.quarantined() == []


def test_the_backlog_told_to_the_intake_counts_due_and_in_flight_entries(runner):
    seen = []
    runner.app.services.flow.update = seen.append
    runner._schedule("A" * 16, 0.0)
    runner._schedule("B" * 16, 0.0)
    runner._schedule("C" * 16, time.time() + 3600)     # deferred: not a backlog
    runner._schedule("A" * 16, 5.0)                     # later than already due: ignored
    assert runner._next() == "A" * 16
    assert seen[-1] == 2                                # B waiting, A in flight
    assert runner._next() == "B" * 16
    assert seen[-1] == 2                                # both in flight
    assert runner._next() is None                       # C is not due for an hour
