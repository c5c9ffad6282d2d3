"""The `queue list/flush/remove` and `sendmail` commands, run as real
subprocesses against the queue and Maildirs of a running `serve`, which
relays to a sink SMTP server found through a DNS server the test runs."""

from __future__ import annotations

import email.utils
import getpass
import json
import re
import time

import pytest

from ..helpers.clients import submit
from ..helpers.logs import events
from ..helpers.mail import parse
from ..helpers.net import HOST
from ..helpers.outbound import mx_relay
from ..helpers.waiting import wait_until

ALICE = "alice@example.org"
LATER = "later@remote.example"          # the sink always answers 451 for this one
ME = f"{getpass.getuser()}@example.org"     # sendmail's default sender: the first local domain


@pytest.fixture
def lab(dns, sinks, servers):
    """(server, sink): remote.example's MX is the sink; retries are an hour apart."""
    sink = sinks(replies={LATER: "451 4.2.0 try later"})
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    server = servers(relay=mx_relay(dns, sink.port, retry="1h", give_up="1d"))
    return server, sink


def deferred(server, sender: str = ALICE, rcpts=(LATER,), subject: str = "stuck") -> str:
    """Queue a message that the sink defers; return its id once the first try is done."""
    queue_id = submit(server.port(), sender, list(rcpts),
                      f"Subject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nbody\r\n")
    wait_until(lambda: events(server, "attempt", msg=queue_id, state="deferred"),
               what=f"a deferred attempt of {queue_id}")
    return queue_id


def sendmail(server, *args: str, stdin: bytes):
    return server.cli("sendmail", *args, stdin=stdin)


# ---------------------------------------------------------------- queue

def test_queue_list_shows_entries_while_serving(lab):
    server, sink = lab
    first = deferred(server)
    second = deferred(server, sender="", subject="bounce-ish")
    result = server.cli("queue", "list")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(rf"^{first}  age \d+\w  from <{ALICE}>$", out, re.M), out
    assert re.search(rf"^{second}  age \d+\w  from <>$", out, re.M), out
    waits = re.findall(rf"^    {LATER}  pending  attempts 1  next try in ((?:\d+[dhms])+)$",
                       out, re.M)
    assert len(waits) == 2, out
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    seconds = [sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", w)) for w in waits]
    assert all(3000 <= wait <= 3600 for wait in seconds), waits
    relay = f"mx.remote.example[{HOST}]:{sink.port}"
    assert out.count(f"        last: 451 4.2.0 try later ({relay})") == 2, out
    assert out.rstrip().endswith("2 entries in the queue")

    result = server.cli("queue", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(row["id"] for row in rows) == sorted([first, second])
    by_id = {row["id"]: row for row in rows}
    assert by_id[first]["sender"] == ALICE and by_id[second]["sender"] == ""
    [recipient] = by_id[first]["recipients"]
    assert recipient["address"] == LATER and recipient["state"] == "pending"
    assert recipient["attempts"] == 1 and recipient["last_reply"] == "451 4.2.0 try later"
    assert recipient["relay"] == relay
    assert recipient["next_attempt"] > time.time() + 3000
    assert 0 <= by_id[first]["age"] < 60


def test_queue_list_of_an_empty_queue(lab):
    server, _ = lab
    result = server.cli("queue", "list")
    assert result.returncode == 0 and result.stdout.strip() == "0 entries in the queue", result
    result = server.cli("queue", "list", "--json")
    assert result.returncode == 0 and result.stdout == "", result


def test_queue_flush_prints_a_count_and_retries_now(lab):
    server, sink = lab
    result = server.cli("queue", "flush")
    assert result.returncode == 0 and result.stdout.strip() == "flushed 0 entries", result
    queue_id = deferred(server)
    result = server.cli("queue", "flush")
    assert result.returncode == 0 and result.stdout.strip() == "flushed 1 entry", result
    [second] = wait_until(lambda: events(server, "attempt", msg=queue_id, attempts="2"),
                          what="the flushed retry")
    assert second["state"] == "deferred"
    assert len(sink.transactions) == 2
    deferred(server, subject="another")
    result = server.cli("queue", "flush")
    assert result.returncode == 0 and result.stdout.strip() == "flushed 2 entries", result


def test_queue_remove_while_serving_means_never_delivered(lab):
    server, sink = lab
    queue_id = deferred(server)
    keep = deferred(server, subject="keep")
    result = server.cli("queue", "remove", queue_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"removed {queue_id}"
    assert server.queue_ids() == [keep]
    assert not any(name.startswith(queue_id) for name in server.queue_files())
    listing = server.cli("queue", "list").stdout
    assert queue_id not in listing and "1 entry in the queue" in listing
    sink.replies[LATER] = ["250 2.1.5 OK now"]             # the sink would take it now
    assert server.cli("queue", "flush").stdout.strip() == "flushed 1 entry"
    wait_until(lambda: events(server, "done", msg=keep), what="the kept entry delivered")
    time.sleep(1.5)
    delivered = sink.delivered(LATER)
    assert len(delivered) == 1 and b"Message-ID: <keep@example.org>" in delivered[0].content
    assert events(server, "attempt", msg=queue_id, attempts="2") == []
    assert server.queue_ids() == []


def test_queue_remove_of_an_unknown_id_fails(lab):
    server, _ = lab
    result = server.cli("queue", "remove", "0000DEADBEEF0000")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "queue remove: no entry 0000DEADBEEF0000 (see: queue list)"
    result = server.cli("queue", "remove", "../../0000DEADBEEF")        # not an id at all
    assert result.returncode == 2 and "not a queue id" in result.stderr
    result = server.cli("queue", "remove")
    assert result.returncode == 2 and "which entry" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- sendmail

def test_sendmail_to_a_local_mailbox_completes_the_header(lab):
    server, _ = lab
    result = sendmail(server, ALICE, stdin=b"Subject: cron\n\nbody\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    [raw] = server.messages("alice")
    assert raw.startswith(f"Return-Path: <{ME}>\n".encode())
    message = parse(raw)
    assert message["Subject"] == "cron"
    assert message["From"].addresses[0].addr_spec == ME
    assert email.utils.parsedate_to_datetime(message["Date"]) is not None
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.org>", message["Message-ID"])
    assert message.get_content() == "body\n"
    assert raw.endswith(b"\n\nbody\n")
    assert server.queue_ids() == []
    # a second one gets a Message-ID of its own
    assert sendmail(server, ALICE, stdin=b"Subject: cron\n\nbody\n").returncode == 0
    ids = [parse(m)["Message-ID"] for m in server.messages("alice")]
    assert len(set(ids)) == 2


def test_sendmail_keeps_header_fields_it_is_given(lab):
    server, _ = lab
    text = (b"From: Robot <robot@example.org>\nDate: Mon, 02 Mar 2026 10:00:00 +0000\n"
            b"Message-ID: <given@example.org>\nSubject: given\n\nbody\n")
    assert sendmail(server, ALICE, stdin=text).returncode == 0
    [raw] = server.messages("alice")
    message = parse(raw)
    assert message["Message-ID"] == "<given@example.org>"
    assert message["Date"] == "Mon, 02 Mar 2026 10:00:00 +0000"
    assert message["From"] == "Robot <robot@example.org>"
    assert raw.count(b"\nFrom:") == 1 and raw.count(b"\nDate:") == 1


def test_sendmail_t_reads_recipients_and_drops_bcc(lab):
    server, sink = lab
    text = (b"To: Alice <alice@example.org>\nCc: bhayden@example.org\n"
            b"Bcc: friend@remote.example\nSubject: dash t\n\nhello all\n")
    result = sendmail(server, "-t", "-f", ALICE, stdin=text)
    assert result.returncode == 0, result.stderr
    [to_alice] = server.messages("alice")
    [to_bhayden] = server.messages("bhayden")
    [remote] = wait_until(lambda: sink.delivered("friend@remote.example"), what="the Bcc copy")
    assert remote.sender == ALICE and remote.accepted == ["friend@remote.example"]
    for raw in (to_alice, to_bhayden, remote.content.replace(b"\r\n", b"\n")):
        message = parse(raw)
        assert message["Subject"] == "dash t" and message["Bcc"] is None, raw
        assert b"Bcc:" not in raw and b"bcc:" not in raw.lower()
        assert message["To"] == "Alice <alice@example.org>"
        assert message.get_content() == "hello all\n"


def test_sendmail_f_sets_the_envelope_sender_and_from(lab):
    server, _ = lab
    result = sendmail(server, "-f", "cron@example.org", ALICE, stdin=b"Subject: f\n\nx\n")
    assert result.returncode == 0, result.stderr
    [raw] = server.messages("alice")
    assert raw.startswith(b"Return-Path: <cron@example.org>\n")
    assert parse(raw)["From"] == "cron@example.org"


def test_sendmail_null_sender_still_gets_a_valid_from_header(lab):
    server, _ = lab
    result = sendmail(server, "-f", "<>", ALICE, stdin=b"Subject: null\n\nx\n")
    assert result.returncode == 0, result.stderr
    [raw] = server.messages("alice")
    assert raw.startswith(b"Return-Path: <>\n")
    # RFC 5322 3.6: every message has a From: with at least one mailbox
    addresses = parse(raw)["From"].addresses
    assert len(addresses) == 1 and "@" in addresses[0].addr_spec, raw


def test_sendmail_to_a_remote_recipient_is_delivered_by_the_server(lab):
    server, sink = lab
    result = sendmail(server, "friend@remote.example", stdin=b"Subject: nightly\n\nall fine\n")
    assert result.returncode == 0, result.stderr
    [transaction] = wait_until(lambda: sink.delivered("friend@remote.example"), timeout=10,
                               what="the running server delivered the queued message")
    assert transaction.sender == ME
    message = parse(transaction.content.replace(b"\r\n", b"\n"))
    assert message["Subject"] == "nightly" and message["From"] == ME
    assert message["Message-ID"] and message["Date"]
    assert message.get_content() == "all fine\n"
    assert transaction.content.startswith(
        b"Received: by mail.example.org (mailbox_appliance sendmail")
    wait_until(lambda: server.queue_files() == [], what="the queue emptied")
    assert all(messages == [] for messages in server.all_messages().values())


def test_sendmail_dot_line_ends_the_message_unless_i(lab):
    server, _ = lab
    text = b"Subject: dots\n\nline1\n.\nline2\n"

    def one_more(*args):
        before = server.messages("alice")
        result = sendmail(server, *args, ALICE, stdin=text)
        assert result.returncode == 0, result.stderr
        [added] = [m for m in server.messages("alice") if m not in before]
        return added

    cut = one_more()
    assert cut.endswith(b"\n\nline1\n") and b"line2" not in cut
    for option in ("-i", "-oi"):
        whole = one_more(option)
        assert whole.endswith(b"\n\nline1\n.\nline2\n"), (option, whole)


def test_sendmail_unknown_local_recipient_delivers_nothing(lab):
    server, _ = lab
    result = sendmail(server, ALICE, "nobody@example.org", "friend@remote.example",
                      stdin=b"Subject: x\n\nx\n")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sendmail: nobody@example.org:"), lines
    assert "Traceback" not in result.stderr
    assert all(messages == [] for messages in server.all_messages().values())
    assert server.queue_files() == []


def test_sendmail_without_recipients_or_with_bad_options(lab):
    server, _ = lab
    result = sendmail(server, stdin=b"Subject: x\n\nx\n")
    assert result.returncode == 2 and "no recipients" in result.stderr      # bad usage
    result = sendmail(server, "-X", ALICE, stdin=b"Subject: x\n\nx\n")
    assert result.returncode == 2 and "unknown option -X" in result.stderr
    result = sendmail(server, "not an address", stdin=b"Subject: x\n\nx\n")
    assert result.returncode == 1 and result.stderr.startswith("sendmail: bad address")
    assert all(messages == [] for messages in server.all_messages().values())


def test_sendmail_accepts_cron_style_options(lab):
    server, _ = lab
    result = sendmail(server, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", ALICE,
                      stdin="Subject: Cron <root@box> backup\n\nrésumé done\n".encode())
    assert result.returncode == 0, result.stderr
    [raw] = server.messages("alice")
    message = parse(raw)
    assert message["From"].addresses[0].display_name == "CronDaemon"
    assert message["From"].addresses[0].addr_spec == ME
    assert "résumé done".encode() in raw
    result = sendmail(server, "-odi", "-oi", "-em", "-r", "robot@example.org", ALICE,
                      stdin=b"Subject: more\n\nx\n")
    assert result.returncode == 0, result.stderr
    assert any(m.startswith(b"Return-Path: <robot@example.org>\n")
               for m in server.messages("alice"))
