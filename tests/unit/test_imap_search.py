"""SEARCH: flags, numbers, dates, sizes, headers, decoded bodies, NOT/OR and
groups; ESEARCH results and SEARCHRES ($)."""

from __future__ import annotations

import os

import pytest

from .imap_driver import Client, make_env, tagged, untagged

MESSAGES = [
    b"From: Ann <ann@example.net>\nTo: alice@example.org\nSubject: Lunch\n"
    b"Date: Tue, 5 Mar 2024 09:00:00 +0100\n\nShall we meet at noon?\n",
    b"From: Bob <bob@example.com>\nTo: alice@example.org\nCc: carol@example.com\n"
    b"Subject: =?utf-8?q?R=C3=A9sum=C3=A9?=\nDate: Wed, 6 Mar 2024 23:30:00 -0800\n"
    b"X-Priority: 1\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n\nVoil=C3=A0 mon CV, tr=C3=A8s d=\nense.\n",
    b"From: Ann <ann@example.net>\nTo: bob@example.com\nBcc: alice@example.org\n"
    b"Subject: Photos\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
    b"--b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
    b"SGVyZSBhcmUgdGhlIHBob3Rvcw==\n--b\nContent-Type: image/jpeg\n"
    b"Content-Transfer-Encoding: base64\n\n/9j/4AAQSkZJRgABAQ==\n--b--\n",
]
DAY = 86400
BASE = 1_709_600_000          # 2024-03-05 00:53:20 UTC


@pytest.fixture
def client(tmp_path, certificate):
    env = make_env(tmp_path, certificate)
    for message in MESSAGES:
        env.deliver(message)
    for number, name in enumerate(sorted(os.listdir(env.maildir() / "new"))):
        stamp = BASE + number * DAY + 12 * 3600     # noon, 5, 6 and 7 March (UTC)
        os.utime(env.maildir() / "new" / name, (stamp, stamp))
    client = Client(env).login()
    client.ok("SELECT INBOX")
    client.ok("STORE 2 +FLAGS.SILENT (\\Seen \\Flagged)")
    client.ok("STORE 3 +FLAGS.SILENT (\\Deleted \\Answered)")
    return client


def search(client: Client, criteria: str, command: str = "SEARCH") -> list[int]:
    answer = client.ok(f"{command} {criteria}")
    [line] = [line for line in untagged(answer) if line.startswith("* SEARCH")]
    return [int(n) for n in line.split()[2:]]


@pytest.mark.parametrize("criteria, expected", [
    ("ALL", [1, 2, 3]), ("SEEN", [2]), ("UNSEEN", [1, 3]), ("FLAGGED", [2]),
    ("UNFLAGGED", [1, 3]), ("DELETED", [3]), ("UNDELETED", [1, 2]), ("ANSWERED", [3]),
    ("UNANSWERED", [1, 2]), ("DRAFT", []), ("UNDRAFT", [1, 2, 3]), ("RECENT", [1, 2, 3]),
    ("NEW", [1, 3]), ("OLD", []), ("KEYWORD $Junk", []), ("UNKEYWORD $Junk", [1, 2, 3]),
    ("2:3", [2, 3]), ("*", [3]), ("UID 1,3", [1, 3]), ("NOT 1", [2, 3]),
    ("OR SEEN DELETED", [2, 3]), ("(UNSEEN NOT DELETED)", [1]), ("1:5", [1, 2, 3]),
    ("FROM ann", [1, 3]), ("FROM BOB@EXAMPLE", [2]), ("TO alice", [1, 2]),
    ("CC carol", [2]), ("BCC alice", [3]), ('SUBJECT "résumé"', [2]), ("SUBJECT lun", [1]),
    ('HEADER X-Priority ""', [2]), ("HEADER X-Priority 2", []),
    ("BODY noon", [1]), ('BODY "voilà"', [2]), ("BODY dense", [2]), ("BODY photos", [3]),
    ("BODY lunch", []), ("TEXT lunch", [1]), ("TEXT 4AAQ", []),
    ("SINCE 6-Mar-2024", [2, 3]), ("BEFORE 6-Mar-2024", [1]), ("ON 6-Mar-2024", [2]),
    ("SENTON 6-Mar-2024", [2]), ("SENTBEFORE 6-Mar-2024", [1]),
    ("SENTSINCE 6-Mar-2024", [2, 3]), ("LARGER 200", [2, 3]), ("SMALLER 200", [1]),
    ('CHARSET UTF-8 SUBJECT {8+}\r\nRésumé', [2]),
])
def test_search_keys(client, criteria, expected):
    assert search(client, criteria) == expected


def test_uid_search_answers_uids(client):
    client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.ok("EXPUNGE")
    assert search(client, "ALL", "UID SEARCH") == [2]
    assert search(client, "ALL") == [1]


def test_unknown_charset_and_bad_syntax(client):
    assert "NO [BADCHARSET (US-ASCII UTF-8)]" in client.command("SEARCH CHARSET KOI8-R ALL")
    assert tagged(client.command("SEARCH FROB")).split()[1] == "BAD"


def test_esearch_and_saved_results(client):
    answer = client.ok("UID SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED")
    assert '* ESEARCH (TAG "t5") UID MIN 1 MAX 2 COUNT 2 ALL 1:2' in answer
    answer = client.ok("SEARCH RETURN () NOT ALL")
    assert untagged(answer) == ['* ESEARCH (TAG "t6")']
    answer = client.ok("SEARCH RETURN (SAVE) FROM ann")
    assert not untagged(answer)
    assert search(client, "$") == [1, 3]
    assert "* 3 FETCH (FLAGS" in client.ok("FETCH $ FLAGS")


def test_imap4rev2_clients_get_esearch(tmp_path, certificate):
    env = make_env(tmp_path, certificate)
    env.deliver(MESSAGES[0])
    client = Client(env).login()
    client.ok("ENABLE IMAP4rev2")
    client.ok("SELECT INBOX")
    assert '* ESEARCH (TAG "t4") ALL 1' in client.ok("SEARCH ALL")
