"""Bounces (RFC 3464 DSNs) built from recipients' typed results: what the
remote server said, or in plain words why no server could be asked; and the
original header they return, cut to a few KB at a field boundary."""

from __future__ import annotations

import email
import email.policy
import re
import time

import pytest

from lib.outbound.dsn import HEADER_LIMIT, build_dsn, original_header, send_dsn
from lib.outbound.results import FailureKind, HostFailure, RemoteReply, record
from lib.store.spool import Envelope, Recipient, RecipientState, new_id

from ..support import BASE_INI, ini

HEAD = b"From: alice@example.org\nSubject: hello\nMessage-ID: <m1@example.org>\n"
FIVE_DAYS = 5 * 86400.0


def failed(address: str, result, relay: str = "none", expired: bool = False) -> Recipient:
    recipient = Recipient(address, state=RecipientState.FAILED, attempts=3, relay=relay,
                          expired=expired)
    record(recipient, result)
    return recipient


def parts(dsn: bytes):
    """(message, explanation text, per-message fields, [per-recipient fields])."""
    message = email.message_from_bytes(dsn, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    explanation, status, headers = message.get_payload()
    assert [p.get_content_type() for p in (explanation, status, headers)] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = [{k.lower(): str(v) for k, v in block.items()} for block in status.get_payload()]
    return message, explanation.get_content(), blocks[0], blocks[1:]


def envelope(*recipients: Recipient) -> Envelope:
    return Envelope("018C2B3D4E5F0A1B", "alice@example.org", list(recipients), 1700000000.0)


def test_a_multi_line_remote_reply_is_what_the_sender_reads():
    reply = RemoteReply.parse(550, b"5.1.1 The email account that you tried to reach does "
                                   b"not exist.\n5.1.1 Please check the address for typos.")
    bad = failed("bad@remote.example", reply, relay="mx.remote.example[192.0.2.25]:25")
    message, explanation, per_message, [fields] = parts(
        build_dsn(envelope(bad), [bad], "mail.example.org", HEAD, FIVE_DAYS))
    said = ("550 5.1.1 The email account that you tried to reach does not exist. "
            "Please check the address for typos.")
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert f"<bad@remote.example>: mx.remote.example answered: {said}" in explanation
    assert per_message["reporting-mta"] == "dns; mail.example.org"
    assert fields["final-recipient"] == "rfc822; bad@remote.example"
    assert fields["action"] == "failed" and fields["status"] == "5.1.1"
    assert fields["remote-mta"] == "dns; mx.remote.example"
    assert fields["diagnostic-code"] == f"smtp; {said}"


def test_a_connection_failure_is_told_in_plain_words():
    refused = HostFailure(FailureKind.REFUSED,
                          "could not connect to mx.remote.example [127.0.0.2]: connection refused")
    slow = failed("slow@remote.example", refused, expired=True)
    message, explanation, _, [fields] = parts(
        build_dsn(envelope(slow), [slow], "mail.example.org", HEAD, FIVE_DAYS))
    words = "could not connect to mx.remote.example [127.0.0.2]: connection refused"
    assert message["Subject"] == "Delivery failed: message expired"
    assert "before the retry period ran out" in explanation
    assert f"<slow@remote.example>: {words} (gave up after 5d)" in explanation
    assert fields["status"] == "4.4.1"
    assert fields["diagnostic-code"] == f"X-mailbox-appliance; {words} (gave up after 5d)"
    assert "remote-mta" not in fields                  # no server answered
    for python_words in ("Error", "Exception", "Errno", "Traceback", "<class"):
        assert python_words not in explanation and python_words not in str(fields)


def test_a_transient_reply_that_expired_keeps_its_status():
    busy = failed("later@remote.example", RemoteReply(451, "4.2.0", "mailbox busy"),
                  relay="mx.remote.example[192.0.2.25]:25", expired=True)
    _, _, _, [fields] = parts(build_dsn(envelope(busy), [busy], "mail.example.org", HEAD, 3.0))
    assert fields["status"] == "4.2.0"
    assert fields["diagnostic-code"] == "smtp; 451 4.2.0 mailbox busy (gave up after 3s)"


def test_statuses_default_by_expiry_when_the_reply_had_no_enhanced_code():
    refused = failed("a@remote.example", RemoteReply(550, None, "no"))
    late = failed("b@remote.example", RemoteReply(451, None, "later"), expired=True)
    message, explanation, _, blocks = parts(
        build_dsn(envelope(refused, late), [refused, late], "mail.example.org", HEAD, 60.0))
    assert [b["status"] for b in blocks] == ["5.0.0", "4.4.7"]
    assert message["Subject"] == "Undelivered Mail Returned to Sender"   # not all expired
    assert "these recipients." in explanation


def test_an_expired_recipient_from_an_old_envelope_bounces_as_expired():
    old = (b'{"id": "018C2B3D4E5F0A1B", "sender": "alice@example.org", "created": 1.0, '
           b'"recipients": [{"address": "slow@remote.example", "state": "failed", '
           b'"attempts": 9, "next_attempt": 0.0, "last_reply": "451 4.4.1 cannot connect '
           b'(gave up after 5d)", "original": "", "relay": "none", "reported": false}]}')
    loaded = Envelope.from_json(old)
    message, _, _, [fields] = parts(
        build_dsn(loaded, loaded.recipients, "mail.example.org", HEAD, FIVE_DAYS))
    assert message["Subject"] == "Delivery failed: message expired"
    assert fields["status"] == "4.4.1"
    assert fields["diagnostic-code"] == "smtp; 451 4.4.1 cannot connect (gave up after 5d)"


# ---------------------------------------------------------------- the returned header

# A stranger's message with 55 KB of header (issue 11): 500 fields, some folded.
BIG_HEAD = b"".join(
    f"X-Filler-{n}: {'x' * 80}\n".encode() if n % 3 else
    f"X-Folded-{n}: {'y' * 40}\n\t{'z' * 40}\n".encode() for n in range(600)) + \
    b"Subject: buy now\n"
FIELD_START = re.compile(rb"^[!-9;-~]+:", re.M)


def whole_fields(head: bytes) -> list[bytes]:
    """The header fields of `head`, each with its continuation lines."""
    starts = [m.start() for m in FIELD_START.finditer(head)]
    return [head[a:b] for a, b in zip(starts, starts[1:] + [len(head)], strict=True)]


def test_a_short_header_is_returned_whole():
    message = HEAD + b"\nbody\n"
    assert original_header(message) == (HEAD, False)
    assert original_header(HEAD) == (HEAD, False)           # a message without a body
    assert original_header(b"\nonly a body\n") == (b"", False)


def test_a_long_header_is_cut_at_a_field_boundary_under_the_limit():
    message = BIG_HEAD + b"\nbody\n"
    assert len(BIG_HEAD) > 50_000
    head, cut = original_header(message[:HEADER_LIMIT + 1])   # what send_dsn reads
    assert cut and 0 < len(head) <= HEADER_LIMIT
    assert BIG_HEAD.startswith(head) and head.endswith(b"\n")
    fields = whole_fields(head)
    assert fields == whole_fields(BIG_HEAD)[:len(fields)]        # whole fields only
    assert BIG_HEAD[len(head):len(head) + 1] not in (b" ", b"\t")  # the next field starts there


@pytest.mark.parametrize("size", [HEADER_LIMIT - 1, HEADER_LIMIT])
def test_a_header_just_under_the_limit_is_not_cut(size):
    head = b"X-Pad: " + b"p" * (size - 8) + b"\n"
    assert len(head) == size
    assert original_header((head + b"\nbody\n")[:HEADER_LIMIT + 1]) == (head, False)


def test_a_dsn_says_when_the_header_was_cut():
    bad = failed("bad@remote.example", RemoteReply(550, "5.1.1", "gone"))
    _, explanation, _, _ = parts(build_dsn(envelope(bad), [bad], "mail.example.org",
                                           b"Subject: x\n", FIVE_DAYS, header_cut=True))
    assert "header of your message is attached below, cut" in explanation
    _, explanation, _, _ = parts(build_dsn(envelope(bad), [bad], "mail.example.org",
                                           b"Subject: x\n", FIVE_DAYS))
    assert "The header of your message is attached below." in explanation


def test_a_bounce_returns_a_few_kb_of_a_strangers_55_kb_header(tmp_path):
    """Issue 11: a forward refused remotely bounced all 55 KB of the header."""
    from lib.session.runtime import Services, load_runtime
    path = tmp_path / "d.ini"
    path.write_text(ini(BASE_INI))
    runtime = load_runtime(path)
    services = Services.create(runtime.config)
    temp = services.spool.begin()
    temp.write(BIG_HEAD + b"\nthe body\n")
    bad = failed("bad@remote.example", RemoteReply(550, "5.1.1", "gone"))
    entry = Envelope(new_id(), "alice@example.org", [bad], time.time())
    services.spool.commit(temp, entry, announce=False)
    send_dsn(runtime, services, entry, [bad], services.spool.message_path(entry.id))
    [stored] = [p for p in (runtime.config.server.data_dir / "mail" / "alice" / "new").iterdir()]
    dsn = stored.read_bytes().split(b"\n", 1)[1]                # past Return-Path
    dsn = dsn.split(b"\n", 1)[1]                                 # past Received
    _, explanation, _, _ = parts(dsn)
    returned = dsn.split(b"Content-Type: text/rfc822-headers\n", 1)[1]
    returned = returned.split(b"\n\n", 1)[1].rsplit(b"\n--", 1)[0]     # the header ends in LF
    assert 0 < len(returned) <= HEADER_LIMIT < len(BIG_HEAD)
    assert BIG_HEAD.startswith(returned)
    assert b"buy now" not in dsn and b"the body" not in dsn
    assert "cut" in explanation
