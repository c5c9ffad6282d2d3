"""The queue runner without remote hosts: bounces that cannot be written, and
the backlog told to the intake."""

from __future__ import annotations

import pytest

from ..support import BASE_INI


class App:
    """What the queue runner needs from the daemon."""

    def __init__(self, runtime, services):
        self.runtime = runtime
        self.services = services


@pytest.fixture
def runner(tmp_path):
    from lib.outbound import runner as runner_module
    from lib.session.runtime import Services, load_runtime

    from ..support import ini
    path = tmp_path / "d.ini"
    path.write_text(ini(BASE_INI + "\n[routes]\nremote.example = 127.0.0.1:9\n"))
    runtime = load_runtime(path)
    return runner_module.QueueRunner(App(runtime, Services.create(runtime.config)))


def queue_one(runner, *recipients):
    import time

    from lib.store.spool import Envelope, Recipient, new_id
    temp = runner.spool.begin()
    temp.write(b"Subject: out\n\nbody\n")
    envelope = Envelope(new_id(), "alice@example.org", [Recipient(r) for r in recipients],
                        time.time())
    return runner.spool.commit(temp, envelope, announce=False)


def test_a_bounce_that_cannot_be_written_is_retried_without_delivering_again(runner,
                                                                            monkeypatch):
    from lib.outbound import client
    from lib.outbound import runner as runner_module
    sent = []

    def remote_answers(runtime, hop, address, sender, recipients, path, utf8, cache=None):
        sent.extend(recipients)
        return client.Outcome(replies={r: ("550 5.1.1 no such user" if r.startswith("bad")
                                             else "250 2.0.0 ok") for r in recipients},
                                relay="mx[127.0.0.1]:9")
    monkeypatch.setattr(runner_module, "transact", remote_answers)
    def disk_full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runner_module, "send_dsn", disk_full)
    queue_id = queue_one(runner, "good@remote.example", "bad@remote.example")
    when = runner.attempt(queue_id)
    assert when is not None and sent == ["good@remote.example", "bad@remote.example"]
    saved = {r.address: (r.state, r.reported) for r in runner.spool.load(queue_id).recipients}
    assert saved == {"good@remote.example": ("delivered", False),
                     "bad@remote.example": ("failed", False)}
    bounces = []
    monkeypatch.setattr(runner_module, "send_dsn", lambda *a: bounces.append(a[3]) or "DSN")
    assert runner.attempt(queue_id) is None                  # reported, entry gone
    assert [r.address for r in bounces[0]] == ["bad@remote.example"]
    assert sent == ["good@remote.example", "bad@remote.example"]   # nobody twice
    assert runner.spool.ids() == []


def test_the_backlog_told_to_the_intake_counts_due_and_in_flight_entries(runner):
    import time
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
