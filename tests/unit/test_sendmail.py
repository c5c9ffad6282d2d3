"""Local submission (sendmail): header completion and the envelope."""

from __future__ import annotations

import pytest

from lib.cli.sendmail import SubmitError, prepare, split_message


def test_missing_headers_are_added_and_bcc_removed_with_t():
    prepared = prepare(b"Subject: x\r\nTo: a@example.org\r\nBcc: hidden@example.org\r\n"
                       b"\r\nbody\r\n", "mail.example.org", "cron@example.org", [], True)
    fields, body = split_message(prepared.message)
    names = [f.split(b":", 1)[0].lower() for f in fields]
    assert b"bcc" not in names and b"date" in names and b"message-id" in names
    assert b"From: cron@example.org" in fields
    assert [str(r) for r in prepared.recipients] == ["a@example.org", "hidden@example.org"]
    assert body == b"body\n" and b"\r" not in prepared.message


def test_bare_local_names_get_the_local_domain():
    prepared = prepare(b"Subject: x\n\nbody\n", "mail.example.org", "", ["root", "a@b.example"],
                       False, local_domain="example.org")
    assert [str(r) for r in prepared.recipients] == ["root@example.org", "a@b.example"]
    assert prepared.sender == ""
    assert b"From: MAILER-DAEMON@mail.example.org" in prepared.message


def test_existing_headers_are_kept_and_folded_ones_understood():
    raw = b"From: Someone <s@example.org>\nTo: a@example.org,\n b@example.org\nDate: x\n" \
          b"Message-ID: <1@x>\n\nhi\n"
    prepared = prepare(raw, "h.example", None, [], True)
    assert prepared.message.count(b"From:") == 1 and prepared.message.count(b"Date:") == 1
    assert [str(r) for r in prepared.recipients] == ["a@example.org", "b@example.org"]


def test_no_recipients_is_an_error():
    with pytest.raises(SubmitError):
        prepare(b"Subject: x\n\nbody\n", "h.example", None, [], False)
    with pytest.raises(SubmitError):
        prepare(b"Subject: x\n\nbody\n", "h.example", None, ["a@@b"], False)
