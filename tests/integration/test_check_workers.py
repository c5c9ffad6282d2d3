"""The check workers: DKIM and DMARC in processes beside the server. Their
answers are the session's own (the same messages checked both ways against a
FakeDNS); a worker that dies is replaced and its check done in the session; one
that hangs is killed at its time limit; none outlives the pool or the server."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import types

import dkim
import pytest

from lib.checks import dmarc
from lib.checks import workers as workers_module
from lib.checks.dkimfast import speed_up_dkimpy
from lib.checks.dns import forget_resolvers, resolver
from lib.checks.workers import CheckWorkers
from lib.config.schema import HostPort

from ..helpers.checks import dkim_key, make_key_pem, message, screened
from ..helpers.net import HOST
from ..helpers.waiting import wait_until
from .test_screening import attempt, plain, start


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return dkim_key(make_key_pem(tmp_path_factory.mktemp("dkim"), bits=2048), "example.org",
                    "sel")


@pytest.fixture
def zone(dns, key):
    dns.txt(key.name, key.record)
    dns.txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    forget_resolvers()
    yield (HostPort(HOST, dns.port),)
    forget_resolvers()


class Recorder:
    """An EventLog stand-in that keeps (level, event) of what the pool logs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def info(self, event: str, **fields) -> None:
        self.events.append(("info", event))

    def warning(self, event: str, **fields) -> None:
        self.events.append(("warning", event))

    def error(self, event: str, **fields) -> None:
        self.events.append(("error", event))

    def problems(self) -> list[tuple[str, str]]:
        return [entry for entry in self.events if entry[0] != "info"]


@pytest.fixture
def pool():
    workers = CheckWorkers(size=2, log=Recorder())
    yield workers
    workers.stop()


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def cases(key) -> dict[str, bytes]:
    signed = key.sign(message())
    return {"signed": signed,
            "tampered": signed.replace(b"this is a test", b"this is a forgery"),
            "unsigned": message(),
            "no key": dkim_key(key.private_pem, "example.org", "nokey").sign(message()),
            "no from": message(""),
            "garbage": b"\x00\xff" * 40 + b"\r\nDKIM-Signature: v=1; b=\r\n\r\n"}


def test_a_worker_answers_as_the_session_would(zone, key, pool):
    for client in ("192.0.2.25", "198.51.100.9"):            # SPF pass, and fail
        envelope = screened(client_ip=client)
        for name, text in cases(key).items():
            here = dmarc.check(envelope, text, "reject", resolver(zone), spf_result=None)
            there = pool.dmarc(envelope, text, "reject", zone, None)
            assert there == here, name
    assert pool.log.problems() == []             # every answer came from a worker
    assert 1 <= len(pool.pids()) <= 2
    assert all(pid != os.getpid() for pid in pool.pids())


def test_a_dead_worker_is_replaced_and_its_check_done_here(zone, key, pool):
    signed = key.sign(message())
    expected = pool.dmarc(screened(), signed, "reject", zone, None)
    assert expected[0].result == "pass"
    [first] = pool.pids()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: os.waitpid(first, os.WNOHANG) != (0, 0) or gone(first), 10)
    assert pool.dmarc(screened(), signed, "reject", zone, None) == expected   # done here
    assert pool.log.problems() == [("warning", "check_worker_failed")]
    assert first not in pool.pids()
    assert pool.dmarc(screened(), signed, "reject", zone, None) == expected   # a new worker
    assert pool.pids() and first not in pool.pids()


def test_a_worker_that_does_not_answer_in_time_is_killed(dns, zone, key):
    dns.silent.add(key.name)                     # the key look-up waits for DNS
    workers = CheckWorkers(size=1, time_limit=0.5)
    try:
        dkim_result, dmarc_result = workers.dmarc(screened(), key.sign(message()), "reject",
                                                  zone, "pass", budget=5)
        assert (dkim_result.result, dmarc_result.result) == ("temperror", "temperror")
        assert "did not finish within 0.5s" in dkim_result.reason
        assert dmarc_result.reply is None                     # temperror refuses nothing
        assert workers.pids() == []
    finally:
        workers.stop()


def test_requests_queued_at_one_worker_get_their_own_answers(zone, key):
    """Sessions do not wait for a free worker: they queue their requests at one
    and each gets its own answer back (a slow first message makes them queue)."""
    workers = CheckWorkers(size=1, log=Recorder())
    slow = key.sign(message(body="a long line of a long body \r\n" * 60000))    # ~1.6 MB
    texts = [slow] + list(cases(key).values()) * 2
    expected = [dmarc.check(screened(), text, "reject", resolver(zone), spf_result=None)
                for text in texts]
    answers: dict[int, tuple] = {}
    start_together = threading.Barrier(len(texts))

    def ask(index: int) -> None:
        start_together.wait(10)
        if index:
            time.sleep(0.05)                         # behind the slow one
        answers[index] = workers.dmarc(screened(), texts[index], "reject", zone, None)

    try:
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [answers.get(n) for n in range(len(texts))] == expected
        assert workers.log.problems() == []          # every answer came from the worker
        assert len(workers.pids()) == 1
        assert workers.most_queued > 1
    finally:
        workers.stop()


@pytest.mark.parametrize("watch", ["watch", "no watch"])
def test_a_stuck_worker_fails_only_its_own_check_and_the_queued_ones_run_here(
        dns, zone, key, monkeypatch, watch):
    """Whoever notices first, the pool's watch or a queued session whose own
    time has run out, only the request the worker is stuck on gets temperror."""
    if watch == "no watch":
        monkeypatch.setattr(workers_module, "WATCH_SECONDS", 60.0)
    dns.silent.add(key.name)                     # the first one's key look-up never ends
    other = dkim_key(key.private_pem, "example.org", "other")
    dns.txt(other.name, other.record)
    workers = CheckWorkers(size=1, time_limit=1.0, log=Recorder())
    results: dict[int, tuple] = {}

    def ask(index: int, text: bytes) -> None:
        results[index] = workers.dmarc(screened(), text, "reject", zone, "pass", budget=5)

    try:
        first = threading.Thread(target=ask, args=(0, key.sign(message())))
        first.start()
        wait_until(lambda: workers.most_queued >= 1, 10)
        rest = [threading.Thread(target=ask, args=(n, other.sign(message()))) for n in (1, 2)]
        for thread in rest:
            thread.start()
        for thread in [first, *rest]:
            thread.join(30)
        assert results[0][0].result == "temperror"
        assert [results[n][0].result for n in (1, 2)] == ["pass", "pass"]   # done here
        assert workers.log.problems() == [("warning", "check_worker_failed")]
        assert workers.enabled                       # a stuck worker is no broken start
    finally:
        workers.stop()


@pytest.mark.parametrize("interpreter", ["/bin/false", "/nonexistent/python3"])
def test_workers_that_cannot_start_are_given_up_on(zone, key, monkeypatch, interpreter):
    """A worker that exits before answering (an interpreter or lib/ the mail user
    may not use), or cannot be started at all: the check is done in the session,
    and after a few such workers none are started any more."""
    monkeypatch.setattr(sys, "executable", interpreter)
    workers = CheckWorkers(size=2)
    signed = key.sign(message())
    try:
        for _ in range(workers_module.GIVE_UP_AFTER):
            assert workers.enabled
            assert workers.dmarc(screened(), signed, "reject", zone, None)[0].result == "pass"
        assert not workers.enabled                   # checked in the session from now on
        assert workers.dmarc(screened(), signed, "reject", zone, None)[0].result == "pass"
        assert workers.pids() == []
    finally:
        workers.stop()


def test_stopping_the_pool_ends_its_workers(zone, key):
    workers = CheckWorkers(size=2)
    workers.dmarc(screened(), key.sign(message()), "reject", zone, None)
    pids = workers.pids()
    assert pids
    workers.stop()
    assert all(gone(pid) for pid in pids)
    # a check asked of a stopped pool is done in the session
    assert workers.dmarc(screened(), key.sign(message()), "tag", zone, None)[0].result == "pass"
    assert workers.pids() == []


def test_the_dkimpy_shortcuts_give_dkimpys_answers(key):
    shortcut = types.SimpleNamespace(crypto=dkim.crypto, evaluate_pk=dkim.evaluate_pk,
                                     RSASSA_PKCS1_v1_5_verify=None,
                                     canonicalization=types.SimpleNamespace())
    speed_up_dkimpy(shortcut)
    record = key.record.encode()
    parsed = shortcut.evaluate_pk(key.name.encode(), record)
    assert shortcut.evaluate_pk(key.name.encode(), record) is parsed     # kept
    assert parsed[:3] == dkim.evaluate_pk(key.name.encode(), record)[:3]
    for bad in (b"v=DKIM1; k=rsa; p=", b"v=DKIM1; k=rsa; p=AAAA"):
        for _ in range(2):                                           # a bad one is not kept
            with pytest.raises(dkim.KeyFormatError):
                shortcut.evaluate_pk(key.name.encode(), bad)
    public_key = parsed[0]
    signed = key.sign(message())
    digest, signature = _digest_and_signature(signed, record)
    for sig in (signature, signature[:-1] + bytes([signature[-1] ^ 1]), b"\x00" * len(signature)):
        assert shortcut.RSASSA_PKCS1_v1_5_verify(digest, sig, public_key) == \
            dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, sig, public_key)
    assert shortcut.RSASSA_PKCS1_v1_5_verify(digest, signature, public_key) is True


def _digest_and_signature(signed: bytes, record: bytes):
    """The header hash and b= signature dkimpy's verify_sig hands to
    RSASSA_PKCS1_v1_5_verify for a signed message (caught on the way)."""
    seen = {}
    original = dkim.RSASSA_PKCS1_v1_5_verify

    def spy(digest, signature, public_key):
        seen["args"] = (digest, signature)         # digest() may be asked again
        return original(digest, signature, public_key)

    dkim.RSASSA_PKCS1_v1_5_verify = spy
    try:
        assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: record)
    finally:
        dkim.RSASSA_PKCS1_v1_5_verify = original
    return seen["args"]


def test_the_server_checks_in_a_worker_and_leaves_none_behind(servers, dns, key):
    dns.txt(key.name, key.record)
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    server = start(servers, dns, "dmarc = reject")
    code, _ = attempt(server, key.sign(plain(author="Alice <alice@example.org>")),
                      sender="alice@example.org")
    assert code == 250
    [stored] = server.messages("alice")
    assert b"\tdkim=pass header.d=example.org" in stored
    started = server.wait_for_log("event=check_worker_started")
    pid = int(re.search(r"event=check_worker_started pid=(\d+)", server.log_text())[1])
    assert not gone(pid) and started
    server.process.send_signal(signal.SIGKILL)              # not even a chance to stop it
    server.process.wait(10)
    wait_until(lambda: gone(pid) or _zombie(pid), 10, what=f"worker {pid} to exit")


def _zombie(pid: int) -> bool:
    """An exited process whose parent (init here) has not reaped it yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
