"""IMAP's storage: folder names (modified UTF-7), Maildir++ folders, special-use
folders and subscriptions; UID lists that survive restarts and are shared by
sessions and processes; flags in file names without touching POP3's UIDs."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from lib.store import folderindex, mutf7
from lib.store.folderindex import UIDLIST, FolderIndex, flags_of, renamed
from lib.store.folders import BadFolderName, FolderExists, FolderMissing, MailStore, check_name
from lib.store.maildir import MaildirStore

from ..helpers.waiting import wait_until

MESSAGE = b"Subject: hi\n\nbody\n"


@pytest.fixture
def maildirs(tmp_path):
    return MaildirStore(tmp_path / "mail", "host.example")


@pytest.fixture
def account(maildirs):
    account = MailStore(maildirs).account("alice")
    account.ensure_special()
    return account


def deliver(maildirs, count=1, mailbox="alice"):
    return [maildirs.deliver([mailbox], MESSAGE)[mailbox] for _ in range(count)]


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name, encoded", [
    ("INBOX", "INBOX"), ("A&B", "A&-B"), ("Ärger", "&AMQ-rger"), ("台北", "&U,BTFw-"),
    ("~peter/mail/&U,BTFw-", "~peter/mail/&-U,BTFw-"), ("😀 x", "&2D3eAA- x")])
def test_modified_utf7_round_trip(name, encoded):
    assert mutf7.encode(name) == encoded
    assert mutf7.decode(encoded) == name


@pytest.mark.parametrize("bad", ["A&B", "&Jjo", "&AGE-", "&Jjo!-", "\x01", "&A-"])
def test_modified_utf7_rejects(bad):
    with pytest.raises(mutf7.Mutf7Error):
        mutf7.decode(bad)


def test_folder_name_rules():
    assert check_name("inbox") == "INBOX" and check_name("Inbox.Sub") == "INBOX.Sub"
    for bad in ("", "a/b", "a..b", ".a", "a.", "a*", "a%b", "tab\there", "x" * 300):
        with pytest.raises(BadFolderName):
            check_name(bad)


# ---------------------------------------------------------------- folders

def test_special_folders_made_and_subscribed(account):
    assert account.names()[0] == "INBOX"
    assert set(account.names()) == {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
    assert account.subscriptions() == ["Sent", "Drafts", "Trash", "Junk"]
    junk = account.path("Junk")
    assert os.path.isfile(os.path.join(junk, "maildirfolder"))
    assert all(os.path.isdir(os.path.join(junk, sub)) for sub in ("tmp", "new", "cur"))
    assert account.special_use("Sent") == "\\Sent" and account.special_use("INBOX") is None


def test_create_makes_parents_on_disk_in_modified_utf7(account):
    account.create("Projekte.Ärger")
    assert os.path.isdir(os.path.join(account.root, ".Projekte.&AMQ-rger", "cur"))
    assert account.exists("Projekte") and "Projekte.Ärger" in account.names()
    with pytest.raises(FolderExists):
        account.create("Projekte")
    with pytest.raises(FolderExists):
        account.create("inbox")


def test_delete_keeps_children_and_leaves_nothing_behind(account, maildirs):
    account.create("A.B")
    account.delete("A")
    assert not account.exists("A") and account.exists("A.B")
    assert not [n for n in os.listdir(account.root) if n.startswith("imap-deleted")]
    with pytest.raises(FolderMissing):
        account.delete("A")
    with pytest.raises(BadFolderName):
        account.delete("INBOX")


def test_rename_moves_children_and_subscriptions(account):
    account.create("A.B")
    account.subscribe("A", "A.B")
    account.rename("A", "Z")
    assert {"Z", "Z.B"} <= set(account.names()) and not account.exists("A")
    assert {"Z", "Z.B"} <= set(account.subscriptions())
    with pytest.raises(BadFolderName):
        account.rename("Z", "Z.inner")


def test_subscriptions_persist(account, maildirs):
    account.subscribe("Lists")
    again = MailStore(maildirs).account("alice")
    assert "Lists" in again.subscriptions()
    assert again.unsubscribe("Lists") and not again.unsubscribe("Lists")


# ---------------------------------------------------------------- UIDs

def test_uids_and_validity_survive_a_restart(maildirs, account):
    deliver(maildirs, 3)
    snapshot, moved = account.index("INBOX").sync(claim=True)
    assert list(snapshot.uids) == [1, 2, 3] and moved == {1, 2, 3}
    deliver(maildirs, 1)
    restarted = MailStore(MaildirStore(maildirs.root, "host.example")).account("alice")
    again, _ = restarted.index("INBOX").sync()
    assert again.uidvalidity == snapshot.uidvalidity
    assert list(again.uids) == [1, 2, 3, 4] and again.uidnext == 5
    text = open(os.path.join(account.root, UIDLIST)).read().splitlines()
    assert text[0] == f"3 V{snapshot.uidvalidity} N4" and text[1].startswith("1 :")
    assert text[4].startswith("4 :")                     # appended, not rewritten


def test_claim_moves_new_to_cur_keeping_pop3_uids(maildirs, account):
    names = deliver(maildirs, 2)
    pop3_uids = [m.uid for m in maildirs.snapshot("alice")]
    index = account.index("INBOX")
    index.sync()                                         # looking (STATUS) moves nothing
    assert sorted(os.listdir(os.path.join(account.root, "new"))) == sorted(names)
    index.sync(claim=True)
    assert not os.listdir(os.path.join(account.root, "new"))
    assert index.change_flags(1, lambda old: old | 8) == 8
    assert sorted(os.listdir(os.path.join(account.root, "cur"))) == \
        sorted([names[0] + ":2,S", names[1] + ":2,"])
    assert [m.uid for m in maildirs.snapshot("alice")] == pop3_uids


def test_a_big_claim_waits_for_the_session_to_rest_then_a_helper_moves_it(maildirs, account,
                                                                  monkeypatch):
    monkeypatch.setattr(folderindex, "CLAIM_AT_ONCE", 5)
    names = deliver(maildirs, 40)
    pop3_uids = [m.uid for m in maildirs.snapshot("alice")]
    index = account.index("INBOX")
    snapshot, moved = index.sync(claim=True)             # answers before the renames
    assert sorted(moved) == list(snapshot.uids) == list(range(1, 41))
    assert index.change_flags(7, lambda old: old | 8) == 8          # meanwhile: a STORE,
    for uid in snapshot.uids:                                       # and every message opens
        os.close(index.open(uid))
    assert index.sync(claim=True)[1] == frozenset()      # no second claim of the same files
    new = os.path.join(account.root, "new")
    assert len(os.listdir(new)) == 39 and index.claiming  # they wait for the session to rest
    index.release_claim()
    for uid in snapshot.uids:                            # while the helper moves them
        os.close(index.open(uid))
    wait_until(lambda: not os.listdir(new) and not index.claiming, what="new/ emptied")
    cur = sorted(os.listdir(os.path.join(account.root, "cur")))
    assert cur == sorted(name + (":2,S" if n == 6 else ":2,") for n, name in enumerate(names))
    again, recent = index.sync(claim=True)
    assert recent == frozenset() and list(again.uids) == list(snapshot.uids)
    assert again.flags[6] == 8 and not any(again.flags[:6])
    assert [m.uid for m in maildirs.snapshot("alice")] == pop3_uids
    deliver(maildirs)                                    # later mail: claimed at once again
    assert index.sync(claim=True)[1] == frozenset({41})
    assert not os.listdir(new)


def test_a_file_gone_before_the_helper_moves_it_is_left_out(maildirs, account, monkeypatch):
    monkeypatch.setattr(folderindex, "CLAIM_AT_ONCE", 5)
    names = deliver(maildirs, 10)
    index = account.index("INBOX")
    assert len(index.sync(claim=True)[1]) == 10
    new = os.path.join(account.root, "new")
    os.unlink(os.path.join(new, names[3]))               # POP3 deleted it meanwhile
    index.release_claim()
    wait_until(lambda: not os.listdir(new) and not index.claiming, what="new/ emptied")
    assert index.name_of(4) == ("new", names[3])         # the helper said it could not move it
    assert index.name_of(5)[0] == "cur"                  # and noted the rest as moved
    snapshot, _ = index.sync()
    assert list(snapshot.uids) == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    with pytest.raises(FileNotFoundError):
        index.open(4)
    for uid in snapshot.uids:
        assert index.name_of(uid)[0] == "cur"
        os.close(index.open(uid))


@pytest.mark.parametrize("interpreter", ["/bin/false", "/nonexistent/python3"])
def test_a_big_claim_is_moved_here_when_no_helper_can_run(maildirs, account, monkeypatch,
                                                          interpreter):
    monkeypatch.setattr(folderindex, "CLAIM_AT_ONCE", 5)
    monkeypatch.setattr(sys, "executable", interpreter)
    names = deliver(maildirs, 12)
    index = account.index("INBOX")
    assert len(index.sync(claim=True)[1]) == 12
    index.release_claim()
    new = os.path.join(account.root, "new")
    wait_until(lambda: not os.listdir(new) and not index.claiming, what="new/ emptied")
    assert sorted(os.listdir(os.path.join(account.root, "cur"))) == sorted(n + ":2," for n in names)
    for uid in range(1, 13):
        os.close(index.open(uid))


def test_a_big_claim_whose_session_never_rests_starts_on_its_own(maildirs, account,
                                                                  monkeypatch):
    monkeypatch.setattr(folderindex, "CLAIM_AT_ONCE", 5)
    monkeypatch.setattr(folderindex, "CLAIM_DEFER_SECONDS", 0.2)
    deliver(maildirs, 20)
    index = account.index("INBOX")
    assert len(index.sync(claim=True)[1]) == 20
    new = os.path.join(account.root, "new")
    wait_until(lambda: index.sync(fast=True) and not os.listdir(new) and not index.claiming,
               what="new/ emptied without release_claim()")


def test_a_fast_look_trusts_a_recent_one_and_a_full_look_does_not(maildirs, account,
                                                                  monkeypatch):
    deliver(maildirs, 2)
    index = account.index("INBOX")
    assert len(index.sync()[0].uids) == 2
    deliver(maildirs)
    assert len(index.sync(fast=True)[0].uids) == 2       # after FETCH: the last look stands
    assert len(index.sync()[0].uids) == 3                # NOOP: looks
    deliver(maildirs)
    monkeypatch.setattr(folderindex, "FAST_SYNC_SECONDS", 0.0)
    assert len(index.sync(fast=True)[0].uids) == 4       # too old a look: looks again
    monkeypatch.undo()
    assert index.change_flags(1, lambda old: old | 8) == 8
    assert index.sync(fast=True)[0].flags[0] == 8        # our own change is never skipped


def test_flag_changes_keep_other_info_letters():
    name = "123.M1P1.host,S=5,W=6:2,Pa"
    assert flags_of(name) == 0
    assert renamed(name, 8 | 16) == "123.M1P1.host,S=5,W=6:2,PSTa"
    assert renamed("bare", 2) == "bare:2,F"


def test_an_expunged_message_never_comes_back_under_its_uid(maildirs, account):
    deliver(maildirs, 2)
    index = account.index("INBOX")
    index.sync(claim=True)
    path = index.filename(1)
    keep = open(path, "rb").read()
    assert index.remove([1]) == [1]
    snapshot, _ = index.sync()
    assert list(snapshot.uids) == [2]
    with open(path, "wb") as handle:                     # the same file name again
        handle.write(keep)
    assert list(index.sync()[0].uids) == [2, 3]


def test_a_torn_last_line_and_a_lost_list(maildirs, account):
    deliver(maildirs, 2)
    index = account.index("INBOX")
    first, _ = index.sync()
    with open(os.path.join(account.root, UIDLIST), "ab") as handle:
        handle.write(b"7 :half-written")                  # a crash in the middle of an append
    fresh = FolderIndex(account.root)
    assert list(fresh.sync()[0].uids) == [1, 2]
    os.unlink(os.path.join(account.root, UIDLIST))
    renumbered, _ = FolderIndex(account.root).sync()
    assert renumbered.uidvalidity != first.uidvalidity and list(renumbered.uids) == [1, 2]


def test_foreign_files_and_sizes(account):
    cur = os.path.join(account.root, "cur")
    with open(os.path.join(cur, "1700000000.12345.other:2,S"), "wb") as handle:
        handle.write(b"Subject: x\r\n\r\nno final newline")
    index = account.index("INBOX")
    snapshot, _ = index.sync()
    assert list(snapshot.uids) == [1] and snapshot.flags[0] == 8
    assert index.size(1) == len(b"Subject: x\r\n\r\nno final newline\r\n")


def test_add_links_copies_and_moves(maildirs, account):
    deliver(maildirs, 2)
    inbox = account.index("INBOX")
    inbox.sync(claim=True)
    trash = account.index("Trash")
    sources = [inbox.filename(1), inbox.filename(2)]
    uids = trash.add([(sources[0], "1.M1P1Q1.h,S=18,W=21:2,S", False),
                      (sources[1], "1.M1P1Q2.h,S=18,W=21:2,", True),
                      ("/nonexistent", "x", True)])
    assert uids == [1, 2, None]
    assert os.path.exists(sources[0]) and not os.path.exists(sources[1])
    snapshot, _ = trash.sync()
    assert list(snapshot.uids) == [1, 2] and snapshot.flags == bytes([8, 0])
    assert list(inbox.sync()[0].uids) == [1]


# ---------------------------------------------------------------- concurrency

def test_two_processes_agree_on_uids_while_mail_arrives(maildirs, account):
    """Two indexes over one folder (two processes) and a delivering thread:
    every message gets exactly one UID, the same in both, none twice."""
    stop = threading.Event()

    def arrive():
        while not stop.is_set():
            deliver(maildirs, 1)

    first, second = FolderIndex(account.root), FolderIndex(account.root)
    thread = threading.Thread(target=arrive)
    thread.start()
    try:
        for turn in range(60):
            (first if turn % 2 else second).sync(claim=turn % 3 == 0)
    finally:
        stop.set()
        thread.join()
    a, _ = first.sync(claim=True)
    b, _ = second.sync()
    files = os.listdir(os.path.join(account.root, "cur")) + \
        os.listdir(os.path.join(account.root, "new"))
    assert list(a.uids) == list(b.uids) == list(range(1, len(files) + 1))
    assert {first.name_of(uid)[1] for uid in a.uids} == set(files)


def test_another_process_sees_flag_changes_and_expunges(maildirs, account):
    deliver(maildirs, 3)
    ours, theirs = FolderIndex(account.root), FolderIndex(account.root)
    ours.sync(claim=True)
    before, _ = theirs.sync()
    assert ours.change_flags(2, lambda old: old | 2) == 2     # \Flagged, by a rename
    after, _ = theirs.sync()
    assert after.uids is before.uids and after.flags == bytes([0, 2, 0])
    assert theirs.name_of(2) == ours.name_of(2)
    assert ours.remove([3]) == [3]
    assert list(theirs.sync()[0].uids) == [1, 2]
    assert ours.change_flags(1, lambda old: old | 16) == 16
    assert theirs.change_flags(1, lambda old: old | 8) == 24  # its name was stale: found again
    assert ours.sync()[0].flags == bytes([24, 2])


def test_dovecot_uids_are_kept_when_moving_from_dovecot(maildirs, account):
    names = deliver(maildirs, 2)
    dovecot = (f"3 V1234567 N43 Gabcdef\n41 :{names[0]}\n42 W99 :{names[1]}\n").encode()
    with open(os.path.join(account.root, "dovecot-uidlist"), "wb") as handle:
        handle.write(dovecot)
    snapshot, _ = account.index("INBOX").sync()
    assert snapshot.uidvalidity == 1234567 and list(snapshot.uids) == [41, 42]
    deliver(maildirs, 1)
    again, _ = FolderIndex(account.root).sync()
    assert list(again.uids) == [41, 42, 43] and again.uidvalidity == 1234567
    assert open(os.path.join(account.root, UIDLIST)).readline() == "3 V1234567 N43\n"
