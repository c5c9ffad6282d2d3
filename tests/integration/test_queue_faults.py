"""The queue facing what goes wrong, end to end: entries whose envelope is bad
or whose message file was cut short (moved to queue/bad/, never fatal, never
sent), bounces of a stranger's forwarded mail (a few KB of header, not 55),
and what `queue` and `sendmail` leave in the log (issues 10 and 11)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from lib.store.spool import Envelope, Recipient, Spool, new_id

from ..helpers.clients import submit
from ..helpers.ini import SERVER_ALIASES
from ..helpers.logs import events
from ..helpers.mail import read_dsn
from ..helpers.net import HOST, free_port
from ..helpers.outbound import mx_relay
from ..helpers.waiting import wait_until

ALICE = "alice@example.org"
FRIEND = "friend@remote.example"
BY = f"uid {os.getuid()}"                       # who ran the command, as the log says it


def remote(dns, sinks, servers, *, start: bool = True, replies=None, retry="1s", give_up="1d",
           **options):
    """remote.example -> MX mx.remote.example -> a sink on 127.0.0.1; a server."""
    sink = sinks(replies=replies or {})
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    server = servers(start=start, relay=mx_relay(dns, sink.port, retry, give_up), **options)
    return server, sink


def place(data: Path, *recipients: Recipient, sender: str = ALICE, change=None,
          body: bytes = b"Subject: placed\n\nbody\n") -> str:
    """Commit a queue entry under `data` as the server would; `change(json)`
    then edits its envelope on disk. Returns the id."""
    spool = Spool(data / "queue")
    temp = spool.begin()
    temp.write(body)
    queue_id = spool.commit(temp, Envelope(new_id(), sender, list(recipients), time.time()),
                            announce=False)
    if change is not None:
        path = spool.envelope_path(queue_id)
        envelope = json.loads(path.read_bytes())
        change(envelope)
        path.write_text(json.dumps(envelope))
    return queue_id


def first_recipient(**fields):
    return lambda envelope: envelope["recipients"][0].update(fields)


def bad_files(server) -> list[str]:
    folder = server.data / "queue" / "bad"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------- bad entries

def test_bad_queue_entries_neither_stop_serve_nor_hold_up_the_good_one(dns, sinks, servers):
    """Issue 11: next_attempt null or "soon" made `serve` exit 1 at every start;
    created "yesterday" delivered, crashed, and delivered again."""
    server, sink = remote(dns, sinks, servers, start=False)
    bad = [place(server.data, Recipient("a@remote.example"),
                 change=first_recipient(next_attempt=None)),
           place(server.data, Recipient("b@remote.example"),
                 change=first_recipient(next_attempt="soon")),
           place(server.data, Recipient("c@remote.example"),
                 change=lambda envelope: envelope.update(created="yesterday"))]
    good = place(server.data, Recipient(FRIEND))
    process = server.start().process
    assert process is not None
    wait_until(lambda: "event=started" in server.log_text() or process.poll() is not None,
               what="serve started (its queue runner read the queue) or died")
    assert process.poll() is None, server.stderr_lines[-5:]          # not dead of a TypeError
    submit(server.port(), ALICE, ["bhayden@example.org"], "Subject: up\r\n\r\nSMTP works\r\n")
    wait_until(lambda: events(server, "done", msg=good), what="the good entry delivered")
    assert len(sink.delivered(FRIEND)) == 1 and len(sink.deliveries()) == 1
    reasons = {e["msg"]: e["reason"] for e in events(server, "quarantined")}
    assert sorted(reasons) == sorted(bad), reasons
    assert "next_attempt is null" in reasons[bad[0]]
    assert 'next_attempt is "soon"' in reasons[bad[1]]
    assert 'created is "yesterday"' in reasons[bad[2]]
    assert bad_files(server) == sorted(f"{i}.{kind}" for i in bad for kind in ("env", "msg"))
    assert server.queue_ids() == []
    listing = server.cli("queue", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [
        "0 entries in the queue",
        f"3 entries quarantined in {server.data / 'queue' / 'bad'} "
        "(the log's event=quarantined lines say why)"]


def test_a_message_file_cut_short_is_quarantined_not_sent_again(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, retry="1h",
                          replies={FRIEND: ["451 4.2.0 later", "250 2.1.5 OK"]})
    queue_id = submit(server.port(), ALICE, [FRIEND],
                      "Subject: cut\r\n\r\n" + "a line of the body\r\n" * 50)
    wait_until(lambda: events(server, "attempt", msg=queue_id, state="deferred"),
               what="the first, deferred attempt")
    message = server.data / "queue" / "entries" / f"{queue_id}.msg"
    size = message.stat().st_size
    with open(message, "r+b") as handle:
        handle.truncate(size // 2)
    assert server.cli("queue", "flush").returncode == 0
    [line] = wait_until(lambda: events(server, "quarantined", msg=queue_id),
                        what="the entry quarantined")
    assert f"{size // 2} octets" in line["reason"] and f"{size} octets" in line["reason"]
    time.sleep(1.0)
    assert len(sink.transactions) == 1 and sink.deliveries() == []   # only the deferred try
    assert server.queue_ids() == [] and bad_files(server) == [f"{queue_id}.env",
                                                              f"{queue_id}.msg"]


# ---------------------------------------------------------------- bounces

STRANGER = "192.0.2.0/24"                      # 127.0.0.1 is a stranger: not trusted


def test_a_bounce_of_a_strangers_forward_returns_a_few_kb_of_header(dns, sinks, servers):
    """Issue 11: a forward refused remotely mailed 55 KB of the stranger's header
    to whatever sender the stranger gave."""
    server, sink = remote(dns, sinks, servers, trusted=STRANGER,
                          aliases=SERVER_ALIASES + "fwd = gone@remote.example\n",
                          replies={"gone@remote.example": "550 5.1.1 no such user"})
    dns.mx("victim.example", (10, "mx.remote.example"))
    filler = "".join(f"X-Filler-{n}: {'x' * 80}\r\n" for n in range(600))
    queue_id = submit(server.port(), "someone@victim.example", ["fwd@example.org"],
                      filler + "Subject: buy now\r\n\r\nthe body\r\n")
    [bounce] = wait_until(lambda: events(server, "bounce", msg=queue_id), what="the bounce")
    wait_until(lambda: sink.delivered("someone@victim.example"), what="the bounce delivered")
    [transaction] = sink.delivered("someone@victim.example")
    dsn = read_dsn(transaction.content.replace(b"\r\n", b"\n"))
    assert len(filler) > 50_000
    assert 0 < len(dsn.headers.encode()) <= 8 * 1024
    assert "buy now" not in dsn.headers and b"the body" not in transaction.content
    assert re.search(r"X-Filler-\d+: x{80}\n?\Z", dsn.headers), dsn.headers[-200:]  # whole fields
    assert "cut after" in dsn.explanation


# ---------------------------------------------------------------- queue list and the log

def test_queue_list_shows_forwards_and_the_quarantined_count(servers):
    server = servers(start=False)
    queue_id = place(server.data, Recipient("bob@gmail.example", original="bob@example.org"),
                     Recipient("carol@remote.example"))
    bad = place(server.data, Recipient("x@remote.example"),
                change=lambda envelope: envelope.update(created="yesterday"))
    result = server.cli("queue", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"{queue_id}  age \d+s  from <{ALICE}>", lines[0]), lines
    assert lines[1:] == [
        "    bob@gmail.example (forward of bob@example.org)  pending  attempts 0  next try now",
        "    carol@remote.example  pending  attempts 0  next try now",
        "1 entry in the queue",
        f"1 entry quarantined in {server.data / 'queue' / 'bad'} "
        "(the log's event=quarantined lines say why)"]
    [line] = events(server, "quarantined")              # in the configured log
    assert line["msg"] == bad and 'created is "yesterday"' in line["reason"]
    result = server.cli("queue", "list", "--json")      # stdout stays one object per entry
    assert result.returncode == 0, result.stderr
    [row] = [json.loads(text) for text in result.stdout.splitlines()]
    assert row["recipients"][0]["original"] == "bob@example.org"
    assert "1 entry quarantined" in result.stderr


def test_queue_flush_and_remove_leave_log_lines(servers):
    """Issue 10: neither left a trace of who did what."""
    server = servers(start=False)
    first = place(server.data, Recipient(FRIEND))
    place(server.data, Recipient(FRIEND))
    assert server.cli("queue", "flush").stdout.strip() == "flushed 2 entries"
    [flushed] = events(server, "flushed")
    assert (flushed["count"], flushed["by"]) == ("2", BY)
    assert server.cli("queue", "remove", first).returncode == 0
    [removed] = events(server, "removed")
    assert (removed["msg"], removed["by"], removed["comp"]) == (first, BY, "queue")


def test_sendmail_local_delivery_leaves_an_accepted_line(servers):
    """Issue 10: mail that `sendmail` delivered itself left no line at all."""
    server = servers(start=False)
    result = server.cli("sendmail", "-f", ALICE, "bhayden@example.org", FRIEND,
                        stdin=b"Subject: from cron\n\nall done\n")
    assert result.returncode == 0, result.stderr
    [stored] = server.messages("bhayden")
    msg_id = re.search(rb"\(mailbox_appliance sendmail, uid \d+\) id (\w+);", stored)
    assert msg_id, stored[:300]
    [line] = events(server, "accepted")
    assert line["msg"] == msg_id.group(1).decode()
    assert (line["origin"], line["uid"]) == ("sendmail", str(os.getuid()))
    assert line["sender"] == f"<{ALICE}>" and line["to"] == f"bhayden@example.org,{FRIEND}"
    assert line["mailboxes"] == "bhayden" and line["queue"] == line["msg"]
    assert int(line["size"]) > 0


def test_a_deferred_attempt_names_the_host_it_tried(dns, servers):
    """Issue 10: relay=none while the failure named the host."""
    port = free_port("127.0.0.2")                       # nothing listens there
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", "127.0.0.2")
    server = servers(relay=mx_relay(dns, port, retry="1h"))
    queue_id = submit(server.port(), ALICE, [FRIEND], "Subject: refused\r\n\r\nbody\r\n")
    [line] = wait_until(lambda: events(server, "attempt", msg=queue_id),
                        what="the deferred attempt")
    relay = f"mx.remote.example[127.0.0.2]:{port}"
    assert (line["state"], line["relay"]) == ("deferred", relay), line
    assert f"({relay})" in server.cli("queue", "list").stdout
