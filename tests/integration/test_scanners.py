"""The scanner clients against the real daemons: spamd with GTUBE, rspamd with
its GTUBE variants and test rules, clamd with EICAR over both sockets; and each
client against a dead, a hung and a garbling scanner, where it must give an
error result in time instead of raising."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from lib.checks import clamd, rspamd, spamd
from lib.checks.verdict import ERROR, Screened
from lib.config.schema import ChecksSection, HostPort
from lib.core import replies

from ..helpers.daemons import (
    CLAMD_STREAM_MAX,
    EICAR,
    EICAR_SIGNATURE,
    GTUBE,
    GTUBE_ADD_HEADER,
    GTUBE_NO_ACTION,
    GTUBE_REWRITE_SUBJECT,
    SilentListener,
)
from ..helpers.net import HOST, free_port
from ..helpers.waiting import wait_until

TIMEOUT = 30.0          # for the real daemons: never reached when they work
SHORT = 1.0             # for the broken scanners

SCREENED = Screened(client_ip="192.0.2.7", helo="mx.example.com", sender="sender@example.com",
                    recipients=("alice@example.org", "bob@example.org"), msg_id="5CAN1D",
                    hostname="mail.example.org")


def checks(**values) -> ChecksSection:
    """[checks] with every check off but those given."""
    settings = dict(dnsbl=(), spf="off", dmarc="off", spamd=None, spam_reject_score=10.0,
                    rspamd="", clamd=None, greylist=False, greylist_delay=180.0,
                    scanner_failure="tempfail")
    settings.update(values)
    return ChecksSection(**settings)


def stored(folder: Path, *body: str, subject: str = "Lunch on Friday",
           headers: tuple[str, ...] = ()) -> Path:
    """A message as our store keeps it (LF line endings), in a file."""
    lines = ["From: Sender <sender@example.com>", "To: Alice <alice@example.org>",
             f"Subject: {subject}", "Date: Mon, 01 Dec 2025 10:00:00 +0000",
             f"Message-ID: <{time.monotonic_ns()}.scanners@example.com>", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=us-ascii", *headers, "",
             *(body or ("Hello Alice,", "", "shall we meet at noon on Friday?", "", "Sam"))]
    path = folder / f"message-{time.monotonic_ns()}.eml"
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii"))
    return path


# ---------------------------------------------------------------- spamd

def spamd_checks(daemon, reject: float) -> ChecksSection:
    return checks(spamd=HostPort(HOST, daemon.port), spam_reject_score=reject)


def test_spamd_refuses_gtube_at_a_low_reject_score(spamd_daemon, tmp_path):
    result = spamd.scan(stored(tmp_path, GTUBE), SCREENED, spamd_checks(spamd_daemon, 10),
                        TIMEOUT)
    assert (result.check, result.result, result.reply) == ("spamd", "spam", replies.SPAM_REJECTED)
    assert "score 1000.0 >= spam_reject_score 10" in result.reason and "GTUBE" in result.reason


def test_spamd_tags_gtube_as_junk_below_a_high_reject_score(spamd_daemon, tmp_path):
    result = spamd.scan(stored(tmp_path, GTUBE), SCREENED, spamd_checks(spamd_daemon, 5000),
                        TIMEOUT)
    assert (result.result, result.reply, result.junk) == ("spam", None, True)
    headers = dict(result.headers)
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"].startswith("Yes, score=1000.0 required=5.0 tests=")
    assert "GTUBE" in headers["X-Spam-Status"].split("tests=")[1].split(",")


def test_spamd_passes_a_plain_message_as_ham(spamd_daemon, tmp_path):
    result = spamd.scan(stored(tmp_path), SCREENED, spamd_checks(spamd_daemon, 10), TIMEOUT)
    assert (result.result, result.reply, result.junk) == ("ham", None, False)
    assert [name for name, _ in result.headers] == ["X-Spam-Status"]
    assert result.headers[0][1].startswith("No, score=")
    assert "GTUBE" not in result.headers[0][1]


# ---------------------------------------------------------------- rspamd

def rspamd_checks(daemon) -> ChecksSection:
    return checks(rspamd=f"http://{HOST}:{daemon.port}")


def test_rspamd_rejects_gtube(rspamd_daemon, tmp_path):
    result = rspamd.scan(stored(tmp_path, GTUBE), SCREENED, rspamd_checks(rspamd_daemon), TIMEOUT)
    assert (result.check, result.result, result.reply) == ("rspamd", "spam",
                                                           replies.SPAM_REJECTED)
    assert result.reason.startswith("action reject, ") and "GTUBE" in result.reason


def test_rspamd_add_header_gtube_is_tagged_as_junk(rspamd_daemon, tmp_path):
    result = rspamd.scan(stored(tmp_path, GTUBE_ADD_HEADER), SCREENED,
                         rspamd_checks(rspamd_daemon), TIMEOUT)
    assert (result.result, result.reply, result.junk) == ("spam", None, True)
    headers = dict(result.headers)
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"].startswith("Yes, score=6.00 required=15.00 tests=GTUBE")
    assert "Subject" not in headers


def test_rspamd_rewrite_subject_gtube_gives_the_new_subject(rspamd_daemon, tmp_path):
    result = rspamd.scan(stored(tmp_path, GTUBE_REWRITE_SUBJECT, subject="Cheap watches"),
                         SCREENED, rspamd_checks(rspamd_daemon), TIMEOUT)
    assert (result.result, result.reply, result.junk) == ("spam", None, True)
    headers = dict(result.headers)
    assert headers["X-Spam-Flag"] == "YES"
    assert headers[rspamd.SUBJECT] == "***SPAM*** Cheap watches"


@pytest.mark.parametrize("body, headers", [
    ((GTUBE_NO_ACTION,), ()),                     # the GTUBE variant for `no action`
    ((), ()),                                     # a plain message
])
def test_rspamd_no_action_passes(rspamd_daemon, tmp_path, body, headers):
    result = rspamd.scan(stored(tmp_path, *body, headers=headers), SCREENED,
                         rspamd_checks(rspamd_daemon), TIMEOUT)
    assert (result.result, result.reply, result.junk, result.headers) == ("ham", None, False, ())
    assert result.reason.startswith("action no action, ")


@pytest.mark.parametrize("header, action", [
    ("X-Test-Action: soft reject", "soft reject"),   # the test rule's forced action
    ("X-Test-Score: 5", "greylist"),                  # a score between greylist and add_header
])
def test_rspamd_soft_reject_and_greylist_defer(rspamd_daemon, tmp_path, header, action):
    result = rspamd.scan(stored(tmp_path, headers=(header,)), SCREENED,
                         rspamd_checks(rspamd_daemon), TIMEOUT)
    assert (result.result, result.reply) == ("defer", replies.SPAM_DEFERRED)
    assert result.reason.startswith(f"action {action}, ")


@pytest.mark.parametrize("sender", ["bounce@example.net", ""])
def test_rspamd_is_told_the_envelope(rspamd_daemon, tmp_path, sender):
    queue_id = f"ENV{time.monotonic_ns()}"
    screened = Screened(client_ip="198.51.100.23", helo="helo.example.net", sender=sender,
                        recipients=("carol@example.org", "dave@example.org"),
                        msg_id=queue_id, hostname="mail.example.org")
    result = rspamd.scan(stored(tmp_path), screened, rspamd_checks(rspamd_daemon), TIMEOUT)
    assert result.result == "ham"
    log = rspamd_daemon.folder / "rspamd.log"

    def logged() -> str:     # rspamd's one line per task names what it was told
        return next((line for line in log.read_text().splitlines()
                     if f"qid: <{queue_id}>" in line and "rspamd_task_write_log" in line), "")
    line = wait_until(logged, 10, what="rspamd's log line for the task",
                      detail=lambda: log.read_text()[-2000:])
    assert "ip: 198.51.100.23," in line
    assert "rcpts: <carol@example.org,dave@example.org>" in line
    assert ("from: <bounce@example.net>" in line) == bool(sender)


# ---------------------------------------------------------------- clamd

@pytest.mark.parametrize("over", ["unix socket", "tcp"])
def test_clamd_names_the_virus_in_eicar(clamd_daemon, tmp_path, over):
    address = clamd_daemon.socket_path if over == "unix socket" else HostPort(HOST,
                                                                               clamd_daemon.port)
    result = clamd.scan(stored(tmp_path, "See the attachment:", "", EICAR), SCREENED,
                        checks(clamd=address), TIMEOUT)
    assert (result.check, result.result) == ("clamd", "virus")
    assert result.reply is not None and result.reply.code == 554
    assert result.reply.enhanced == "5.7.1"
    assert f"virus found ({EICAR_SIGNATURE}" in result.reply.text


@pytest.mark.parametrize("over", ["unix socket", "tcp"])
def test_clamd_passes_a_clean_message(clamd_daemon, tmp_path, over):
    address = clamd_daemon.socket_path if over == "unix socket" else HostPort(HOST,
                                                                               clamd_daemon.port)
    result = clamd.scan(stored(tmp_path), SCREENED, checks(clamd=address), TIMEOUT)
    assert (result.result, result.reply) == ("clean", None)


@pytest.mark.parametrize("over", ["unix socket", "tcp"])
def test_clamd_size_limit_is_an_error_not_a_pass(clamd_daemon, tmp_path, over):
    """clamd answers and hangs up before it has read the whole message: its
    answer must still be read (not taken for a dropped connection)."""
    address = clamd_daemon.socket_path if over == "unix socket" else HostPort(HOST,
                                                                               clamd_daemon.port)
    line = "x" * 76
    big = stored(tmp_path, *[line] * (CLAMD_STREAM_MAX // 77 + 1000))
    result = clamd.scan(big, SCREENED, checks(clamd=address), TIMEOUT)
    assert result.result == ERROR and result.reply is None
    assert "size limit exceeded" in result.reason


# ---------------------------------------------------------------- broken scanners

CLIENTS = {"spamd": spamd.scan, "rspamd": rspamd.scan, "clamd": clamd.scan}


def pointed_at(name: str, port: int) -> ChecksSection:
    """[checks] with scanner `name` at 127.0.0.1:port."""
    if name == "rspamd":
        return checks(rspamd=f"http://{HOST}:{port}")
    return checks(**{name: HostPort(HOST, port)})


@pytest.mark.parametrize("name", CLIENTS)
def test_a_dead_scanner_is_an_error_at_once(name, tmp_path):
    began = time.monotonic()
    result = CLIENTS[name](stored(tmp_path), SCREENED, pointed_at(name, free_port()), TIMEOUT)
    assert (result.check, result.result, result.reply) == (name, ERROR, None)
    assert result.reason.startswith(f"cannot reach {name} at ")
    assert result.reason.endswith(": connection refused")
    assert time.monotonic() - began < 2


def test_a_missing_clamd_socket_is_an_error(tmp_path):
    result = clamd.scan(stored(tmp_path), SCREENED, checks(clamd=tmp_path / "no.sock"), TIMEOUT)
    assert result.result == ERROR
    assert result.reason == f"cannot reach clamd at {tmp_path / 'no.sock'}: no such socket"


@pytest.mark.parametrize("name", CLIENTS)
def test_a_hung_scanner_is_an_error_after_the_timeout(name, tmp_path):
    with SilentListener() as hung:
        began = time.monotonic()
        result = CLIENTS[name](stored(tmp_path), SCREENED, pointed_at(name, hung.port), SHORT)
        took = time.monotonic() - began
    assert (result.result, result.reply) == (ERROR, None)
    assert result.reason.endswith(f": no answer within {SHORT:g}s")
    assert SHORT * 0.9 <= took < SHORT + 2


def test_a_hung_clamd_socket_is_an_error_after_the_timeout(tmp_path):
    with SilentListener(socket_path=tmp_path / "hung.sock"):
        began = time.monotonic()
        result = clamd.scan(stored(tmp_path), SCREENED, checks(clamd=tmp_path / "hung.sock"),
                            SHORT)
    assert result.result == ERROR and "no answer within" in result.reason
    assert time.monotonic() - began < SHORT + 2


@pytest.mark.parametrize("name", CLIENTS)
def test_a_garbling_scanner_is_an_error(name, tmp_path):
    with SilentListener(answer=b"220 this is not the scanner you are looking for\r\n") as odd:
        result = CLIENTS[name](stored(tmp_path), SCREENED, pointed_at(name, odd.port), 5.0)
    assert (result.result, result.reply) == (ERROR, None)
    assert result.reason.startswith(f"{name} at ")
    assert " gave an unreadable answer: " in result.reason


@pytest.mark.parametrize("name", CLIENTS)
def test_a_large_message_is_streamed_not_read_whole(name, tmp_path):
    line = "y" * 76
    big = stored(tmp_path, *[line] * (8 * 1024 * 1024 // 77))     # 8 MB
    size = big.stat().st_size
    with SilentListener() as sink:
        tracemalloc.start()
        try:
            result = CLIENTS[name](big, SCREENED, pointed_at(name, sink.port), 1.5)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        wait_until(lambda: sink.received >= size, 5, what="the whole message sent")
    assert result.result == ERROR and "no answer within" in result.reason
    assert peak < 1024 * 1024, f"{peak} octets at the peak for a {size}-octet message"
