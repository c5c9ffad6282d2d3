"""Bounces (RFC 3464 DSNs) built from recipients' typed results: what the
remote server said, or in plain words why no server could be asked."""

from __future__ import annotations

import email
import email.policy

from lib.outbound.dsn import build_dsn
from lib.outbound.results import FailureKind, HostFailure, RemoteReply, record
from lib.store.spool import Envelope, Recipient, RecipientState

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
