"""Messages: built as a client sends them, read back as the server stored them,
and DSNs (RFC 3464) parsed with their structure checked on the way."""

from __future__ import annotations

import email
import email.message
import email.policy
import os
from dataclasses import dataclass
from typing import cast

SENDER = "sender@example.com"


def message(subject: str, *body: str, sender: str = SENDER,
            to: str = "alice@example.org") -> bytes:
    """A message as it travels: CRLF line endings, not yet dot-stuffed, a fresh
    Message-ID."""
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}",
             f"Message-ID: <{os.urandom(6).hex()}@client.example.com>", "", *body]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def stored_form(wire: bytes) -> bytes:
    """What a message sent with CRLFs looks like in a Maildir file."""
    return wire.replace(b"\r\n", b"\n")


def split_trace(stored: bytes, sender: str | None = None, *,
                return_path: bool = True) -> tuple[bytes, bytes]:
    """A delivered message -> (its Received: field, the message after it).

    With `return_path` it must start with a `Return-Path:` line (exactly
    `Return-Path: <sender>` when `sender` is given), which is checked and left out;
    without, it must not have one. The Received: field comes next, with its
    continuation lines. Works on stored files (LF) and on what POP3 sends (CRLF)."""
    lines = stored.splitlines(keepends=True)
    index = 0
    if return_path:
        assert lines and lines[0].startswith(b"Return-Path: "), stored[:200]
        if sender is not None:
            assert lines[0].rstrip(b"\r\n") == f"Return-Path: <{sender}>".encode(), stored[:200]
        index = 1
    assert index < len(lines) and lines[index].startswith(b"Received: "), stored[:400]
    end = index + 1
    while end < len(lines) and lines[end][:1] in (b"\t", b" "):
        end += 1
    return b"".join(lines[index:end]), b"".join(lines[end:])


def content_of(stored: bytes, sender: str | None = None, *, return_path: bool = True) -> bytes:
    """A delivered message without the trace fields the server prepended."""
    return split_trace(stored, sender, return_path=return_path)[1]


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


@dataclass
class Dsn:
    raw: bytes
    message: email.message.EmailMessage
    per_message: dict[str, str]
    recipients: list[dict[str, str]]      # per-recipient fields, names lower-cased
    headers: str                          # the text/rfc822-headers part
    explanation: str


def is_dsn(data: bytes) -> bool:
    return parse(data).get_content_type() == "multipart/report"


def read_dsn(data: bytes) -> Dsn:
    """Parse a stored DSN and check its RFC 3464 structure on the way."""
    message = parse(data)
    assert message.get_content_type() == "multipart/report", message.get_content_type()
    assert message.get_param("report-type") == "delivery-status"
    parts = cast(list[email.message.EmailMessage], message.get_payload())
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"], \
        [p.get_content_type() for p in parts]
    blocks = cast(list[email.message.Message], parts[1].get_payload())
    assert len(blocks) >= 2, blocks
    as_dict = [{k.lower(): str(v) for k, v in block.items()} for block in blocks]
    return Dsn(raw=data, message=message, per_message=as_dict[0], recipients=as_dict[1:],
               headers=parts[2].get_content(), explanation=parts[0].get_content())


def dsns(messages: list[bytes]) -> list[Dsn]:
    """The DSNs among a mailbox's messages, parsed."""
    return [read_dsn(m) for m in messages if is_dsn(m)]
