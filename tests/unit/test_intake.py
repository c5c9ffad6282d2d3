"""The intake: a message rewritten after screening (headers added, a stranger's
claims removed) and committed to the Junk folders, with real files on disk."""

from __future__ import annotations

import os

import pytest

from lib.core.addresses import Address
from lib.core.durable import DirSyncer
from lib.store.intake import HEAD_SCAN_LIMIT, REWRITE_IN_PLACE, Destinations, Intake
from lib.store.maildir import MaildirStore, pop3_size_of_file
from lib.store.spool import Spool, new_id

RECEIVED = b"Received: from x by mail.example.org; Tue, 1 Dec 2026 00:00:00 +0000\n"


@pytest.fixture
def intake(tmp_path):
    syncer = DirSyncer()
    return Intake(MaildirStore(tmp_path / "mail", "mail.example.org", syncer),
                  Spool(tmp_path / "queue", syncer))


def begin(intake, mailboxes=("alice",), remote=()):
    return intake.begin(new_id(), Address("x", "sender.example"),
                        Destinations(tuple(mailboxes), tuple(remote)), RECEIVED)


def stored(tmp_path, target) -> list[tuple[str, bytes]]:
    folder = tmp_path / "mail" / target / "new"
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())] if folder.exists() else []


@pytest.mark.parametrize("body_size", [10, 3 * HEAD_SCAN_LIMIT, 2 * REWRITE_IN_PLACE])
def test_rewrite_adds_fields_above_ours_and_filters_the_clients_header(intake, tmp_path,
                                                                       body_size):
    message = begin(intake)
    head = b"From: a@sender.example\nX-Spam-Flag: YES\nSubject: hi\n"
    body = b"\n" + (b"line of the body\n" * (body_size // 17 + 1))
    message.write(head + body)
    message.rewrite(b"Authentication-Results: mail.example.org; spf=pass\n",
                    lambda h: h.replace(b"X-Spam-Flag: YES\n", b""))
    message.commit()
    [(name, data)] = stored(tmp_path, "alice")
    assert data == (b"Return-Path: <x@sender.example>\n"
                    b"Authentication-Results: mail.example.org; spf=pass\n" + RECEIVED
                    + b"From: a@sender.example\nSubject: hi\n" + body)
    path = tmp_path / "mail" / "alice" / "new" / name
    assert f",S={len(data)}," in name and name.endswith(f",W={pop3_size_of_file(path)}")


def test_a_small_message_is_rewritten_before_anything_reaches_its_file(intake):
    """Each write, truncate and rewrite is a system call that gives up the
    interpreter lock, and screening rewrites every stranger's message."""
    message = begin(intake)
    message.write(b"From: a@sender.example\n\nbody\n")
    message.rewrite(b"Authentication-Results: mail.example.org; spf=pass\n", lambda h: h)
    assert os.path.getsize(message.path) == 0
    message.discard()


def test_content_is_what_the_client_sent(intake):
    message = begin(intake)
    message.write(b"Subject: x\n\nbody\n")
    assert message.content() == b"Subject: x\n\nbody\n"
    message.discard()


def test_junk_goes_to_each_mailboxs_junk_folder_and_the_queue_copy_stays(intake, tmp_path):
    message = begin(intake, ("alice", "bhayden"), (("friend@remote.example", ""),))
    message.write(b"Subject: cheap\n\nspam\n")
    accepted = message.commit(junk=True)
    assert accepted.junk and set(accepted.mailboxes) == {"alice", "bhayden"}
    for mailbox in ("alice", "bhayden"):
        assert stored(tmp_path, mailbox) == []
        [(_, data)] = stored(tmp_path, f"{mailbox}/.Junk")
        assert data.endswith(b"Subject: cheap\n\nspam\n")
        assert (tmp_path / "mail" / mailbox / ".Junk" / "maildirfolder").exists()
    assert accepted.queue_id is not None
    assert [n for n in os.listdir(tmp_path / "queue" / "entries") if n.endswith(".msg")]
