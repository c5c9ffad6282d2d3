"""The IMAP side of the real server (`mailbox_appliance.py serve`) over 127.0.0.1:
imaplib and raw sockets, plain, STARTTLS and imaps, on real Maildirs
(DESIGN.md 7.3), and POP3 on the same mailbox at the same time.

Mail arrives through the server's own SMTP listener; what IMAP does to it is
checked on disk too (Maildir++ folders, flags in the file names).
"""

from __future__ import annotations

import base64
import imaplib
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lib.store.folderindex import CLAIM_AT_ONCE
from lib.store.maildir import MaildirStore

from ..helpers.clients import pop3_login, submit
from ..helpers.imap import (
    RawImap,
    imap_client,
    imap_login,
    mbsync_config,
    offlineimap_config,
    ok,
    response_code,
)
from ..helpers.ini import PASSWORD
from ..helpers.mail import SENDER, message
from ..helpers.net import HOST, TIMEOUT
from ..helpers.server import ServerProcess
from ..helpers.tls import client_context
from ..helpers.waiting import wait_until

LISTEN = {"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0", "imaps": "127.0.0.1:0",
          "pop3": "127.0.0.1:0"}
WAKE_SECONDS = 5.0          # IDLE must report a delivery within this long
CURL = "/usr/bin/curl"
MBSYNC = "/usr/bin/mbsync"              # Debian's isync
OFFLINEIMAP = "/usr/bin/offlineimap"    # Debian's offlineimap3


@pytest.fixture
def start(servers, certificate):
    """start(**options) -> a running server with SMTP, IMAP, IMAPS and POP3 on loopback."""
    def run(name: str = "server", **options) -> ServerProcess:
        return servers(name=name, listen=dict(LISTEN), tls=certificate, **options)
    return run


def send(server: ServerProcess, subject: str, body: str = "body",
         to: str = "alice@example.org") -> None:
    submit(server.port("smtp"), SENDER, [to], message(subject, body))


def home(server: ServerProcess, mailbox: str = "alice") -> Path:
    return server.data / "mail" / mailbox


def flags_on_disk(folder: Path) -> list[str]:
    """The flags (the info suffix: "FS" of ":2,FS") of the messages in a Maildir
    folder's cur/ that have any."""
    return sorted(flags for p in (folder / "cur").iterdir()
                  if (flags := p.name.partition(":2,")[2]))


def fetched(data: list, item: str) -> list[bytes]:
    """The value of a simple FETCH item (FLAGS, UID) in each imaplib response."""
    pattern = re.compile(item.encode() + rb" (\([^)]*\)|\d+)")
    found = []
    for part in data:
        text = part[0] if isinstance(part, tuple) else part
        if isinstance(text, bytes) and (match := pattern.search(text)):
            found.append(match.group(1))
    return found


def copyuid(client: imaplib.IMAP4) -> list[bytes]:
    """The arguments of the last [COPYUID ...] (imaplib files response codes apart)."""
    _, data = client.response("COPYUID")
    assert data and data[-1], "no COPYUID"
    return data[-1].split()


def without_recent(data: list) -> list[set[bytes]]:
    """The FLAGS of each response, \\Recent left out (it belongs to a session)."""
    return [set(flags.strip(b"()").split()) - {b"\\Recent"} for flags in fetched(data, "FLAGS")]


# ---------------------------------------------------------------- login and TLS

def test_starttls_imaps_and_plaintext_rules(start, certificate):
    server = start()
    context = client_context(certificate[0])

    client = imap_client(server.port("imap"))
    assert "STARTTLS" in client.capabilities and "AUTH=PLAIN" in client.capabilities
    ok(client.starttls(context))
    assert "STARTTLS" not in client.capabilities
    ok(client.login("alice", PASSWORD))
    ok(client.select())
    client.logout()

    secure = imap_client(server.port("imaps"), context)
    assert "STARTTLS" not in secure.capabilities
    ok(secure.login("Alice@Example.ORG", PASSWORD))
    with pytest.raises(imaplib.IMAP4.error):
        secure.login("alice", PASSWORD)                 # already logged in
    secure.logout()

    wrong = imap_client(server.port("imap"))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        wrong.login("alice", "wrong")
    wrong.logout()


def test_logindisabled_without_tls_when_plaintext_auth_never(start, certificate):
    server = start(plaintext_auth="never")
    client = imap_client(server.port("imap"))
    assert "LOGINDISABLED" in client.capabilities and "AUTH=PLAIN" not in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED|Plaintext"):
        client.login("alice", PASSWORD)
    ok(client.starttls(client_context(certificate[0])))
    assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
    token = f"\0alice\0{PASSWORD}".encode()
    ok(client.authenticate("PLAIN", lambda _: token))
    client.logout()


def test_commands_pipelined_behind_starttls_are_dropped(start, certificate):
    """CVE-2011-0411: what came in clear text after STARTTLS is not run inside TLS."""
    server = start()
    with RawImap(server.port("imap")) as raw:
        assert raw.line().startswith(b"* OK")
        raw.send(b'a STARTTLS\r\nb LOGIN alice "' + PASSWORD.encode() + b'"\r\n')
        assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
        raw.starttls(client_context(certificate[0]), hostname=HOST)
        answer = raw.command(b"c", b"SELECT INBOX")
        assert answer[-1].startswith(b"c BAD"), answer          # not logged in: b was dropped
        assert not any(line.startswith(b"b ") for line in answer)
    assert "pipelined_before_tls" in server.wait_for_log("pipelined_before_tls")


def test_lockout_after_auth_failures(start):
    server = start(limits="auth_failures = 3/1m\n")
    client = imap_client(server.port("imap"))
    for _ in range(3):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("alice", "wrong")
    with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
        client.login("alice", PASSWORD)
    client.logout()
    again = imap_client(server.port("imap"))                # a new connection changes nothing
    with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
        again.authenticate("PLAIN", lambda _: f"\0alice\0{PASSWORD}".encode())
    again.logout()


# ---------------------------------------------------------------- folders

def test_list_special_use_and_folders_on_disk(start):
    server = start()
    client = imap_login(server.port("imap"))
    listing = b"\n".join(ok(client.list()))
    for flag, name in ((rb"\Sent", b"Sent"), (rb"\Drafts", b"Drafts"), (rb"\Trash", b"Trash"),
                       (rb"\Junk", b"Junk")):
        assert re.search(rb"\(.*" + re.escape(flag) + rb".*\) \".\" \"?" + name, listing), listing
    assert (home(server) / ".Sent" / "cur").is_dir() and (home(server) / ".Junk").is_dir()

    ok(client.create("Projects"))
    ok(client.create("Projects.2026"))
    assert (home(server) / ".Projects.2026" / "new").is_dir()
    ok(client.rename("Projects.2026", "Projects.Archive"))
    assert (home(server) / ".Projects.Archive" / "cur").is_dir()
    assert not (home(server) / ".Projects.2026").exists()
    children = ok(client.list('""', "Projects*"))
    assert any(b"Projects.Archive" in line for line in children), children
    assert any(b"\\HasChildren" in line and line.rstrip(b'"').endswith(b" Projects")
               or b'HasChildren' in line and line.endswith(b'"Projects"')
               for line in children), children
    ok(client.delete("Projects.Archive"))
    assert not (home(server) / ".Projects.Archive").exists()
    status, _ = client.create("INBOX")
    assert status == "NO"
    status, data = client.select("Nowhere")
    assert status == "NO" and b"NONEXISTENT" in data[0]
    client.logout()


# ---------------------------------------------------------------- messages

def test_select_examine_status_append_fetch_search(start):
    server = start()
    send(server, "first", "alpha")
    send(server, "second", "the word zanzibar is only here")
    send(server, "third", "gamma")
    client = imap_login(server.port("imap"))

    status = ok(client.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)"))[0]
    assert b"MESSAGES 3" in status and b"UNSEEN 3" in status and b"UIDNEXT 4" in status
    ok(client.select("INBOX", readonly=True))            # EXAMINE
    assert client.untagged_responses.get("READ-ONLY") is not None
    status, _ = client.store("1", "+FLAGS", r"\Seen")
    assert status == "NO"                                   # read-only
    assert ok(client.select("INBOX")) == [b"3"]

    when = imaplib.Time2Internaldate(time.mktime((2024, 2, 29, 12, 30, 0, 0, 0, -1)))
    draft = message("draft", "draft text")
    answer = ok(client.append("Drafts", r"(\Draft \Seen)", when, draft))
    validity, uid = response_code(answer[0], b"APPENDUID")
    assert uid == b"1"
    assert flags_on_disk(home(server) / ".Drafts") == ["DS"]
    ok(client.select("Drafts"))
    data = ok(client.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"))
    assert b"29-Feb-2024" in data[0][0] and b"\\Draft" in data[0][0]
    assert data[0][1] == draft
    validity_status = ok(client.status("Drafts", "(UIDVALIDITY)"))[0]
    assert validity in validity_status

    ok(client.select("INBOX"))
    data = ok(client.fetch("1:3", "(UID FLAGS ENVELOPE BODYSTRUCTURE)"))
    assert fetched(data, "UID") == [b"1", b"2", b"3"]
    assert b'"first"' in data[0] and b'("TEXT" "PLAIN"' in data[0]
    assert without_recent(data) == [set()] * 3
    part = ok(client.fetch("2", "(BODY.PEEK[TEXT]<4.4>)"))
    assert part[0][1] == b"word"
    assert ok(client.uid("SEARCH", "TEXT", "zanzibar")) == [b"2"]
    assert ok(client.search(None, "UNSEEN")) == [b"1 2 3"]
    body = ok(client.fetch("3", "(BODY[])"))                 # sets \Seen
    assert b"gamma" in body[0][1]
    assert ok(client.search(None, "SEEN")) == [b"3"]
    client.logout()


def test_store_copy_move_expunge_on_disk(start):
    server = start()
    for n in range(1, 6):
        send(server, f"message {n}")
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    ok(client.store("1:2", "+FLAGS", r"(\Flagged \Seen)"))
    assert flags_on_disk(home(server)) == ["FS", "FS"]
    ok(client.store("2", "-FLAGS", r"\Flagged"))
    assert flags_on_disk(home(server)) == ["FS", "S"]

    trash = home(server) / ".Trash"
    ok(client.uid("COPY", "1:2", "Trash"))
    _, source, target = copyuid(client)
    assert source == b"1:2" and target == b"1:2"
    assert sorted(flags_on_disk(trash)) == ["FS", "S"]

    ok(client.uid("MOVE", "3", "Junk"))
    assert copyuid(client)[1:] == [b"3", b"1"]
    assert len(list((home(server) / ".Junk" / "cur").iterdir()) +
               list((home(server) / ".Junk" / "new").iterdir())) == 1
    assert ok(client.uid("SEARCH", "ALL")) == [b"1 2 4 5"]

    ok(client.store("4", "+FLAGS", r"\Deleted"))         # sequence 4 = UID 5
    ok(client.store("1", "+FLAGS", r"\Deleted"))         # UID 1
    ok(client.uid("EXPUNGE", "5"))                        # only UID 5 goes
    assert ok(client.uid("SEARCH", "ALL")) == [b"1 2 4"]
    # imaplib gathers every EXPUNGE: MOVE's (UID 3), UID EXPUNGE's (UID 5), this one's (UID 1)
    assert ok(client.expunge()) == [b"3", b"4", b"1"]
    assert ok(client.uid("SEARCH", "ALL")) == [b"2 4"]
    on_disk = list((home(server) / "cur").iterdir()) + list((home(server) / "new").iterdir())
    assert len(on_disk) == 2
    client.logout()


def test_flags_uids_and_uidvalidity_survive_a_restart(start):
    server = start()
    for n in range(3):
        send(server, f"keep {n}")
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    ok(client.store("2", "+FLAGS", r"(\Answered \Flagged)"))
    ok(client.store("1", "+FLAGS", r"\Deleted"))
    ok(client.expunge())
    before = ok(client.status("INBOX", "(UIDVALIDITY UIDNEXT)"))[0]
    flags_before = ok(client.uid("FETCH", "1:*", "(FLAGS)"))
    client.logout()

    server.stop()
    server.start()
    send(server, "after restart")
    client = imap_login(server.port("imap"))
    validity = response_code(before.replace(b"(", b"[").replace(b")", b"]"), b"UIDVALIDITY")
    after = ok(client.status("INBOX", "(UIDVALIDITY UIDNEXT)"))[0]
    assert b"UIDVALIDITY " + validity[0] in after and b"UIDNEXT 5" in after
    ok(client.select("INBOX"))
    flags_after = ok(client.uid("FETCH", "1:3", "(FLAGS)"))
    assert without_recent(flags_after) == without_recent(flags_before)
    assert ok(client.uid("SEARCH", "ALL")) == [b"2 3 4"]
    client.logout()


# ---------------------------------------------------------------- IDLE and deadlines

def test_idle_is_woken_by_a_delivery_and_outlives_command_timeout(start):
    server = start(limits="command_timeout = 2s\n")
    send(server, "already here")
    with RawImap(server.port("imap")) as idler:
        idler.login()
        idler.command(b"s", b"SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        assert idler.line() == b"+ idling\r\n"
        time.sleep(3)                                    # past command_timeout: still there
        send(server, "news")
        began = time.monotonic()
        assert idler.line() == b"* 2 EXISTS\r\n"
        assert time.monotonic() - began < WAKE_SECONDS
        idler.send(b"DONE\r\n")
        assert idler.until_tagged(b"i")[-1].startswith(b"i OK")
        # out of IDLE, the command deadline is back: a silent client is logged out
        began = time.monotonic()
        line = idler.line()
        assert line is not None and line.startswith(b"* BYE"), line
        assert 1.5 <= time.monotonic() - began <= 5


def test_a_trickled_command_line_is_cut_off(start):
    """The slowloris rule: a command must be whole within command_timeout of its first byte."""
    server = start(limits="command_timeout = 2s\n")
    with RawImap(server.port("imap")) as slow:
        slow.login()
        began = time.monotonic()
        for octet in b"a NOOP" + b" x" * 40:           # a byte every 0.25 s: never a whole line
            if not slow.nothing_pending(0.25):
                break
            slow.send(bytes([octet]))
        closed = slow.line()
        assert closed is not None and closed.startswith(b"* BYE"), closed
        assert time.monotonic() - began < 4.5


def test_shutdown_ends_idle_with_bye_and_a_full_server_says_bye(start):
    server = start(limits="max_connections_per_ip = 2\n")
    # the second of the two connections allowed: a client still to start its TLS handshake
    with RawImap(server.port("imap")) as idler, RawImap(server.port("imaps")):
        idler.login()
        idler.command(b"s", b"SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        assert idler.line() == b"+ idling\r\n"
        with RawImap(server.port("imap")) as third:
            line = third.line()
            assert line is not None and line.startswith(b"* BYE [UNAVAILABLE]"), line
            third.assert_closed()
        began = time.monotonic()
        server.send_signal(signal.SIGTERM)
        line = idler.line()
        assert line is not None and line.startswith(b"* BYE [UNAVAILABLE] Server shutting down")
        assert time.monotonic() - began < 3
        idler.assert_closed()


# ---------------------------------------------------------------- POP3 and IMAP together

def test_pop3_and_imap_share_a_mailbox(start):
    server = start()
    for n in range(3):
        send(server, f"shared {n}")
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    ok(client.store("1", "+FLAGS", r"\Flagged"))           # IMAP flags: POP3's UIDs stay
    pop = pop3_login(server.port("pop3"))
    uidl = pop.uidl()[1]
    pop.quit()
    ok(client.store("1", "+FLAGS", r"\Answered"))
    ok(client.store("2", "+FLAGS", r"\Seen"))
    pop = pop3_login(server.port("pop3"))
    assert pop.uidl()[1] == uidl
    assert pop.dele(2).startswith(b"+OK")                   # POP3 deletes: IMAP sees EXPUNGE
    pop.quit()
    ok(client.noop())
    assert client.untagged_responses.get("EXPUNGE") == [b"2"]
    assert ok(client.uid("SEARCH", "ALL")) == [b"1 3"]
    flags = ok(client.uid("FETCH", "1", "(FLAGS)"))[0]
    assert b"\\Answered" in flags and b"\\Flagged" in flags
    client.logout()


def test_a_big_inbox_moves_to_cur_once_its_session_leaves_it(start):
    server = start()
    send(server, "first")                                  # the Maildir exists
    store = MaildirStore(server.data / "mail", "elsewhere.example")
    for n in range(CLAIM_AT_ONCE + 10):                    # more than one SELECT moves at once
        store.deliver(["alice"], message(f"bulk {n}"))
    new = home(server) / "new"
    count = CLAIM_AT_ONCE + 11
    pop = pop3_login(server.port("pop3"))
    uidl = pop.uidl()[1]
    pop.quit()
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    assert client.untagged_responses["EXISTS"] == [str(count).encode()]
    assert client.untagged_responses["RECENT"] == [str(count).encode()]
    assert len(list(new.iterdir())) == count               # not yet: the client is busy
    bodies = ok(client.fetch("1:5", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"Subject: first" in bodies[0][1]
    ok(client.select("Junk"))                              # it leaves INBOX: they move
    wait_until(lambda: not list(new.iterdir()), what="new/ emptied")
    assert len(list((home(server) / "cur").iterdir())) == count
    ok(client.select("INBOX"))
    assert client.untagged_responses.get("RECENT") == [b"0"]
    fetched = ok(client.fetch(f"{count}", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert f"UID {count} ".encode() in fetched[0][0] and b"bulk" in fetched[0][1]
    client.logout()
    pop = pop3_login(server.port("pop3"))
    assert pop.uidl()[1] == uidl                           # POP3's view did not change
    pop.quit()


def test_authenticate_plain_with_an_initial_response(start):
    server = start()
    with RawImap(server.port("imap")) as raw:
        assert raw.line().startswith(b"* OK")
        token = base64.b64encode(f"\0alice\0{PASSWORD}".encode())
        answer = raw.command(b"a", b"AUTHENTICATE PLAIN " + token)
        assert answer[-1].startswith(b"a OK"), answer


# ---------------------------------------------------------------- real clients

def run_client(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_curl_lists_and_fetches_over_imap_and_imaps(start, certificate, tmp_path):
    server = start()
    send(server, "for curl", "curl body text")
    user = ["-u", f"alice:{PASSWORD}", "--cacert", str(certificate[0])]
    listing = run_client(CURL, "-sS", *user, f"imaps://{HOST}:{server.port('imaps')}/",
                         cwd=tmp_path).stdout
    assert re.search(r'\\Sent\) "\." "?Sent', listing) and '"INBOX"' in listing, listing
    search = run_client(CURL, "-sS", "--ssl-reqd", *user, "-X", "UID SEARCH ALL",
                        f"imap://{HOST}:{server.port('imap')}/INBOX", cwd=tmp_path).stdout
    assert search.strip() == "* SEARCH 1", search
    body = run_client(CURL, "-sS", "--ssl-reqd", *user,
                      f"imap://{HOST}:{server.port('imap')}/INBOX;UID=1", cwd=tmp_path).stdout
    assert "Subject: for curl" in body and "curl body text" in body
    body = run_client(CURL, "-sS", *user, f"imaps://{HOST}:{server.port('imaps')}/INBOX;UID=1",
                      cwd=tmp_path).stdout
    assert "curl body text" in body


def local_files(folder: Path) -> dict[str, str]:
    """{Subject: Maildir flags} of the messages in a local Maildir folder."""
    found = {}
    for sub in ("new", "cur"):
        for path in (folder / sub).iterdir():
            subject = re.search(rb"^Subject: (.*)$", path.read_bytes(), re.M)
            assert subject, path
            found[subject.group(1).decode().strip()] = path.name.partition(":2,")[2]
    return found


def test_mbsync_syncs_a_whole_account_both_ways(start, certificate, tmp_path):
    server = start()
    send(server, "one")
    send(server, "two")
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    ok(client.store("1", "+FLAGS", r"\Flagged"))
    config = mbsync_config(tmp_path / "mbsync", server.port("imaps"), certificate[0])
    local = tmp_path / "mbsync" / "local"

    run_client(MBSYNC, "-c", config, "-a", cwd=tmp_path)
    assert local_files(local / "INBOX") == {"one": "F", "two": ""}
    assert (local / "Sent").is_dir() and (local / "Junk").is_dir()

    # both sides change: a message written locally into Sent, a flag set locally,
    # a delivery and a flag on the server
    sent = local / "Sent" / "new" / "1700000000.local.host"
    sent.write_bytes(message("written locally", "from the laptop").replace(b"\r\n", b"\n"))
    [two] = [p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()
             if b"Subject: two" in p.read_bytes()]
    two.rename(local / "INBOX" / "cur" / (two.name.partition(":2,")[0] + ":2,RS"))
    send(server, "three")
    ok(client.store("1", "+FLAGS", r"\Seen"))

    run_client(MBSYNC, "-c", config, "-a", cwd=tmp_path)
    assert local_files(local / "INBOX") == {"one": "FS", "two": "RS", "three": ""}
    ok(client.select("Sent"))
    data = ok(client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"written locally" in data[0][1]
    assert len(list((home(server) / ".Sent" / "cur").iterdir()) +
               list((home(server) / ".Sent" / "new").iterdir())) == 1
    ok(client.select("INBOX"))
    flags = ok(client.fetch("2", "(FLAGS)"))[0]
    assert b"\\Answered" in flags and b"\\Seen" in flags
    client.logout()


def test_offlineimap3_syncs_once(start, certificate, tmp_path):
    server = start()
    send(server, "offline one")
    send(server, "offline two")
    client = imap_login(server.port("imap"))
    ok(client.select("INBOX"))
    ok(client.store("2", "+FLAGS", r"\Flagged"))
    client.logout()
    folder = tmp_path / "offlineimap"
    folder.mkdir()
    config = offlineimap_config(folder, server.port("imaps"), certificate[0])
    result = run_client(OFFLINEIMAP, "-c", config, "-o", "-u", "basic", cwd=tmp_path)
    assert "ERROR" not in result.stdout + result.stderr, result.stdout[-2000:]
    assert local_files(folder / "mail" / "INBOX") == {"offline one": "", "offline two": "F"}
    assert (folder / "mail" / "Trash").is_dir()


# ---------------------------------------------------------------- the config

def test_check_knows_the_imap_listeners(servers, certificate):
    with_tls = servers(name="tls", start=False, tls=certificate,
                       listen={"imap": "0.0.0.0:0", "imaps": "127.0.0.1:0"})
    result = with_tls.cli("check")
    assert result.returncode == 0, result.stderr
    assert "imap 0.0.0.0:0" in result.stdout and "imaps 127.0.0.1:0" in result.stdout

    clear = servers(name="clear", start=False, listen={"imap": "0.0.0.0:0"})
    result = clear.cli("check")
    assert "no [tls] while imap 0.0.0.0:0 listen beyond this machine" in \
        result.stdout + result.stderr

    no_tls = servers(name="notls", start=False, listen={"imaps": "127.0.0.1:0"})
    result = no_tls.cli("check")
    assert result.returncode != 0
    assert "[listen] imaps" in result.stderr and "needs [tls]" in result.stderr
