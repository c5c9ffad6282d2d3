"""The IMAP engine driven with no sockets: states, logins, literals, folders,
flags, IDLE, and two sessions (and POP3) on one mailbox."""

from __future__ import annotations

import base64
import os
import re

import pytest

from lib.core import replies
from lib.imap.session import MAX_BAD_COMMANDS, ImapSession, State
from lib.pop3.session import Pop3Session
from lib.session.engine import Action, ClientInfo
from lib.store import mutf7

from ..helpers.ini import PASSWORD
from .imap_driver import PLAIN_MESSAGE, TLS, Client, make_env, tagged, untagged

TOKEN = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()


@pytest.fixture
def env(tmp_path, certificate):
    return make_env(tmp_path, certificate)


@pytest.fixture
def client(env):
    return Client(env).login()


def selected(env, folder="INBOX"):
    client = Client(env).login()
    client.ok(f"SELECT {folder}")
    return client


# ---------------------------------------------------------------- greeting, capabilities, TLS

def test_greeting_names_capabilities_and_offers_starttls(env):
    plain = Client(env, tls=None)
    assert plain.greeting.startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert "STARTTLS" in plain.greeting and "LOGINDISABLED" in plain.greeting
    assert "AUTH=PLAIN" not in plain.greeting          # a stranger without TLS
    secure = Client(env)
    assert "AUTH=PLAIN" in secure.greeting and "STARTTLS" not in secure.greeting


def test_starttls_then_login_allowed(env):
    client = Client(env, tls=None)
    answer = client.command("STARTTLS")
    assert tagged(answer) == f"t1 {replies.IMAP_TLS_BEGIN.text}" or "OK" in tagged(answer)
    assert client.last.action is Action.START_TLS
    client.session.tls_started(TLS)
    assert "AUTH=PLAIN" in client.ok("CAPABILITY")
    assert "BAD" in tagged(client.command("STARTTLS"))       # TLS already active
    client.login()


def test_login_refused_in_plaintext_but_allowed_on_loopback(env):
    stranger = Client(env, tls=None)
    answer = stranger.command(f'LOGIN alice "{PASSWORD}"')
    assert "NO [PRIVACYREQUIRED]" in tagged(answer)
    assert "NO [PRIVACYREQUIRED]" in tagged(stranger.command(f"AUTHENTICATE PLAIN {TOKEN}"))
    Client(env, ip="127.0.0.1", tls=None).login()


# ---------------------------------------------------------------- logins

def test_login_logs_and_answers_capabilities(env):
    client = Client(env)
    answer = client.ok(f'LOGIN alice@example.org "{PASSWORD}"')
    assert "OK [CAPABILITY IMAP4rev1" in answer and "AUTH=PLAIN" not in answer
    assert client.session.state is State.AUTHENTICATED and client.session.user == "alice"
    assert env.recorder.events("login") and "user=alice" in env.recorder.events("login")[0]


def test_wrong_password_then_lockout(env):
    client = Client(env)
    for _ in range(5):
        answer = client.command('LOGIN alice "wrong"')
        assert tagged(answer).endswith(replies.IMAP_AUTH_FAILED.text)
        assert "[AUTHENTICATIONFAILED]" in answer
    assert "NO [UNAVAILABLE]" in client.command(f'LOGIN alice "{PASSWORD}"')
    failures = env.recorder.events("login_failed")
    assert len(failures) == 6 and "reason=" in failures[0]


def test_authenticate_plain_with_continuation_and_sasl_ir(env):
    client = Client(env)
    assert client.send("a AUTHENTICATE PLAIN\r\n") == "+ \r\n"
    assert client.session.max_line == 12288
    assert tagged(client.send(TOKEN + "\r\n")).startswith("a OK")
    second = Client(env)
    assert tagged(second.command(f"AUTHENTICATE PLAIN {TOKEN}")).startswith("t1 OK")


def test_authenticate_cancel_bad_base64_and_unknown_mechanism(env):
    client = Client(env)
    client.send("a AUTHENTICATE PLAIN\r\n")
    assert client.send("*\r\n") == "a BAD Authentication cancelled\r\n"
    client.send("b AUTHENTICATE PLAIN\r\n")
    assert tagged(client.send("%%%\r\n")).startswith("b BAD Cannot decode")
    assert "NO" in tagged(client.command("AUTHENTICATE CRAM-MD5"))
    assert client.session.state is State.NOT_AUTHENTICATED


# ---------------------------------------------------------------- syntax, states, budget

def test_wrong_state_unknown_command_and_bad_tag(env):
    client = Client(env)
    assert tagged(client.command("SELECT INBOX")) == "t1 BAD Command not valid in this state"
    assert tagged(client.command("FETCH 1 FLAGS")).startswith("t2 BAD")
    assert tagged(client.command("XYZZY")) == "t3 BAD Unknown command"
    assert client.send("+bad CAPABILITY\r\n").startswith("* BAD")
    assert client.send("\r\n").startswith("* BAD")
    assert client.send("a LOGIN al\0ice x\r\n") == "a BAD NUL character in command\r\n"


def test_error_budget_closes_the_connection(env):
    client = Client(env)
    for _ in range(MAX_BAD_COMMANDS):
        assert not client.closed
        client.command("XYZZY")
    answer = client.send("x XYZZY\r\n")
    assert client.closed and answer.endswith(str(replies.IMAP_TOO_MANY_ERRORS) + "\r\n")


def test_noop_capability_id_namespace_logout(client):
    assert client.ok("NOOP") == "t2 OK NOOP completed\r\n"      # t1 was the LOGIN
    assert '* ID ("name" "mailbox_appliance")' in client.ok('ID ("name" "test")')
    assert '* NAMESPACE (("" ".")) NIL NIL' in client.ok("NAMESPACE")
    answer = client.ok("LOGOUT")
    assert answer.startswith("* BYE") and client.closed
    assert client.session.state is State.LOGOUT


def test_shutdown_and_timeout_say_bye(env):
    client = Client(env)
    step = client.session.shutdown()
    assert step.action is Action.CLOSE and step.replies[0].status == "BYE"
    other = Client(env)
    assert other.session.timeout().replies == [replies.IMAP_TIMEOUT]


def test_line_too_long(env):
    client = Client(env)
    assert client.session.max_line == 64 * 1024
    step = client.session.line_too_long()
    assert step.replies[0].status == "BAD" and step.replies[0].code == "TOOBIG"


# ---------------------------------------------------------------- literals

def test_synchronising_literals_get_a_go_ahead(env):
    client = Client(env)
    assert client.send("a LOGIN {5}\r\n") == "+ Ready for literal data\r\n"
    assert client.session.receiving_data and client.session.literal_remaining == 5
    answer = client.send(b"alice {%d}\r\n" % len(PASSWORD))
    assert answer == "+ Ready for literal data\r\n"
    assert tagged(client.send(PASSWORD + "\r\n")).startswith("a OK")


def test_non_synchronising_literals_and_leftover(env):
    client = Client(env)
    data = f"a LOGIN {{5+}}\r\nalice {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\nb NOOP\r\n"
    answer = client.send(data)
    assert "a OK" in answer and answer.endswith("b OK NOOP completed\r\n")
    assert "+ Ready" not in answer


def test_oversized_literals_refused_but_read(env):
    client = Client(env)
    answer = client.send("a LOGIN {100000}\r\n")
    assert answer.startswith("a BAD [TOOBIG]") and not client.session.receiving_data
    # a non-synchronising one is read and dropped: its octets are not commands
    big = b"x\r\nz LOGOUT\r\n" + b"y" * 99_986
    answer = client.send(b"b LOGIN {100000+}\r\n" + big + b" pw\r\nc NOOP\r\n")
    assert "z" not in answer and answer.startswith("b BAD [TOOBIG]")
    assert answer.endswith("c OK NOOP completed\r\n") and not client.closed


# ---------------------------------------------------------------- ENABLE, UTF-8 names

def test_enable_imap4rev2_switches_names_to_utf8(client):
    client.ok('CREATE "&AMQ-rger"')            # Ärger in modified UTF-7
    assert os.path.isdir(client.env.maildir() / ".&AMQ-rger")
    assert '"&AMQ-rger"' in client.ok('LIST "" "*"')
    assert "* ENABLED IMAP4rev2" in client.ok("ENABLE IMAP4rev2 CONDSTORE")
    assert '"Ärger"' in client.ok('LIST "" "*"')
    answer = client.ok('SELECT "Ärger"')
    assert "RECENT" not in answer and '* LIST (\\HasNoChildren) "." "Ärger"' in answer


def test_bad_modified_utf7_is_refused(client):
    assert "NO [CANNOT]" in tagged(client.command('CREATE "A&B"'))


# ---------------------------------------------------------------- folders

def test_list_special_use_and_children(client):
    client.ok("CREATE Work.Projects")
    answer = client.ok('LIST "" "*"')
    lines = untagged(answer)
    assert lines[0] == '* LIST (\\HasNoChildren) "." "INBOX"'
    assert '* LIST (\\HasNoChildren \\Sent) "." "Sent"' in lines
    assert '* LIST (\\HasChildren) "." "Work"' in lines
    assert '* LIST (\\HasNoChildren) "." "Work.Projects"' in lines
    top = untagged(client.ok('LIST "" "%"'))
    assert not any("Projects" in line for line in top) and len(top) == 6
    special = untagged(client.ok('LIST (SPECIAL-USE) "" "*"'))
    assert {line.split('"')[-2] for line in special} == {"Sent", "Drafts", "Trash", "Junk"}
    assert untagged(client.ok('LIST "" ""')) == ['* LIST (\\Noselect) "." ""']


def test_list_nonexistent_parent_and_status_return(client):
    client.env.deliver()
    os.makedirs(client.env.maildir() / ".A.B" / "cur")
    for sub in ("new", "tmp"):
        os.makedirs(client.env.maildir() / ".A.B" / sub)
    assert '* LIST (\\Noselect \\HasChildren) "." "A"' in client.ok('LIST "" "A*"')
    answer = client.ok('LIST "" "INBOX" RETURN (STATUS (MESSAGES UNSEEN))')
    assert '* STATUS "INBOX" (MESSAGES 1 UNSEEN 1)' in answer
    assert '\\NonExistent' in client.ok('LIST "" "A" RETURN (CHILDREN)')


def test_subscriptions(client):
    assert len(untagged(client.ok('LSUB "" "*"'))) == 4      # the special folders
    client.ok("CREATE Lists")
    client.ok("SUBSCRIBE Lists")
    assert '* LSUB () "." "Lists"' in client.ok('LSUB "" "L*"')
    answer = client.ok('LIST (SUBSCRIBED) "" "*"')
    assert '* LIST (\\HasNoChildren \\Subscribed) "." "Lists"' in answer
    client.ok("UNSUBSCRIBE Lists")
    assert "Lists" not in client.ok('LSUB "" "*"')


def test_create_delete_rename(client):
    client.ok("CREATE Old.Child")
    assert "[ALREADYEXISTS]" in tagged(client.command("CREATE Old"))
    client.ok("RENAME Old New")
    names = client.ok('LIST "" "*"')
    assert '"New.Child"' in names and '"Old' not in names
    client.ok("DELETE New.Child")
    assert "[NONEXISTENT]" in tagged(client.command("DELETE New.Child"))
    assert "NO" in tagged(client.command("DELETE INBOX"))
    assert "NO [CANNOT]" in tagged(client.command("CREATE a/b"))


def test_rename_inbox_moves_its_messages(client):
    client.env.deliver()
    client.ok("RENAME INBOX Archive")
    assert "MESSAGES 0" in client.ok("STATUS INBOX (MESSAGES)")
    assert "MESSAGES 1" in client.ok("STATUS Archive (MESSAGES)")


def test_status_items(client):
    name = client.env.deliver()
    answer = client.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE)")
    size = re.search(r",W=(\d+)", name).group(1)
    assert re.search(rf"MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1 DELETED 0 "
                     rf"SIZE {size}\)", answer), answer
    assert "[NONEXISTENT]" in tagged(client.command("STATUS Nope (MESSAGES)"))


# ---------------------------------------------------------------- SELECT, EXAMINE, CLOSE

def test_select_responses_and_recent(env):
    env.deliver()
    env.deliver()
    client = selected(env)
    assert client.ok("NOOP") == "t3 OK NOOP completed\r\n"
    env.deliver()
    assert "* 3 EXISTS" in client.ok("NOOP")
    other = Client(env).login()
    answer = other.ok("SELECT INBOX")
    for expected in ("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                     "* OK [PERMANENTFLAGS (\\Answered", "* 3 EXISTS", "* 0 RECENT",
                     "* OK [UNSEEN 1]", "* OK [UIDVALIDITY ", "* OK [UIDNEXT 4]",
                     "OK [READ-WRITE] SELECT completed"):
        assert expected in answer, expected
    assert "* OK [CLOSED]" in other.ok("EXAMINE INBOX")


def test_examine_is_read_only(env):
    env.deliver()
    client = Client(env).login()
    answer = client.ok("EXAMINE INBOX")
    assert "[PERMANENTFLAGS ()]" in answer and "[READ-ONLY]" in answer
    assert "NO [CANNOT]" in tagged(client.command("STORE 1 +FLAGS (\\Seen)"))
    assert "NO [CANNOT]" in tagged(client.command("EXPUNGE"))
    client.ok("FETCH 1 BODY[]")
    assert "\\Seen" not in client.ok("FETCH 1 FLAGS")
    assert os.listdir(env.maildir() / "new")            # EXAMINE takes nothing out of new/


def test_close_expunges_silently_unselect_does_not(env):
    for _ in range(3):
        env.deliver()
    client = selected(env)
    client.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    client.ok("UNSELECT")
    assert client.session.state is State.AUTHENTICATED
    client.ok("SELECT INBOX")
    answer = client.ok("CLOSE")
    assert answer == "t6 OK CLOSE completed\r\n"
    assert "MESSAGES 1" in client.ok("STATUS INBOX (MESSAGES)")


# ---------------------------------------------------------------- APPEND

def test_append_with_flags_and_date(client):
    message = b"Subject: draft\r\n\r\nunfinished\r\n"
    head = b'a APPEND Drafts (\\Draft \\Seen) "05-Mar-2024 14:30:00 +0100" {%d}\r\n' % len(message)
    assert client.send(head) == "+ Ready for literal data\r\n"
    answer = client.send(message + b"\r\n")
    match = re.fullmatch(r"a OK \[APPENDUID (\d+) 1\] APPEND completed\r\n", answer)
    assert match, answer
    folder = client.env.maildir() / ".Drafts" / "cur"
    [name] = os.listdir(folder)
    assert name.endswith(":2,DS")
    assert (folder / name).read_bytes() == b"Subject: draft\n\nunfinished\n"
    assert os.stat(folder / name).st_mtime == 1709645400
    client.ok("SELECT Drafts")
    answer = client.ok("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert "FLAGS (\\Draft \\Seen)" in answer and f"RFC822.SIZE {len(message)}" in answer


def test_append_refusals(client, env):
    answer = client.send("a APPEND Nowhere {5}\r\n")
    assert answer == "a NO [TRYCREATE] No such folder\r\n" and not client.session.receiving_data
    limit = env.runtime.config.limits.max_message_size
    assert "NO [TOOBIG]" in client.send(f"b APPEND INBOX {{{limit + 1}}}\r\n")
    answer = client.send("c APPEND INBOX {0+}\r\n\r\n")
    assert answer.startswith("c NO")
    answer = client.send(b"d APPEND Nowhere {3+}\r\nabc\r\ne NOOP\r\n")
    assert answer == "d NO [TRYCREATE] No such folder\r\ne OK NOOP completed\r\n"
    assert not [n for n in os.listdir(env.maildir() / "tmp")]


def test_append_to_selected_folder_reports_exists(env):
    client = selected(env)
    answer = client.send(b"a APPEND INBOX {11+}\r\nSubject: x\n\r\n")
    assert "* 1 EXISTS" in answer and "APPENDUID" in answer


# ---------------------------------------------------------------- STORE, EXPUNGE, COPY, MOVE

def test_store_variants(env):
    env.deliver()
    client = selected(env)
    assert "* 1 FETCH (FLAGS (\\Recent \\Flagged))" in client.ok("STORE 1 +FLAGS (\\Flagged)")
    answer = client.ok("STORE 1 FLAGS (\\Seen \\Answered)")
    assert "FLAGS (\\Recent \\Answered \\Seen)" in answer
    assert client.ok("STORE 1 -FLAGS.SILENT (\\Seen)") == "t5 OK STORE completed\r\n"
    answer = client.ok("UID STORE 1 +FLAGS (\\Deleted)")
    assert "* 1 FETCH (UID 1 FLAGS (\\Recent \\Answered \\Deleted))" in answer
    [name] = os.listdir(env.maildir() / "cur")
    assert name.endswith(":2,RT")
    assert "BAD" in tagged(client.command("STORE 5 +FLAGS (\\Seen)"))


def test_uid_expunge_only_removes_the_given_uids(env):
    for _ in range(3):
        env.deliver()
    client = selected(env)
    client.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    answer = client.ok("UID EXPUNGE 2")
    assert untagged(answer) == ["* 2 EXPUNGE"]
    answer = client.ok("EXPUNGE")
    assert untagged(answer) == ["* 2 EXPUNGE", "* 1 EXPUNGE"]


def test_copy_and_move_with_copyuid(env):
    for _ in range(3):
        env.deliver()
    client = selected(env)
    client.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    answer = client.ok("COPY 1:2 Trash")
    assert re.fullmatch(r"t\d OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n", answer)
    answer = client.ok("UID MOVE 2:3 Trash")
    lines = answer.split("\r\n")
    assert re.match(r"\* OK \[COPYUID \d+ 2:3 3:4\]", lines[0])
    assert lines[1:3] == ["* 3 EXPUNGE", "* 2 EXPUNGE"]
    assert "NO [TRYCREATE]" in tagged(client.command("COPY 1 Nowhere"))
    trash = os.listdir(env.maildir() / ".Trash" / "cur")
    assert len(trash) == 4 and sum(name.endswith(":2,F") for name in trash) == 2
    inbox = os.listdir(env.maildir() / "cur")
    assert len(inbox) == 1 and not set(n.split(":")[0] for n in trash) & {inbox[0].split(":")[0]}


# ---------------------------------------------------------------- IDLE

def test_idle_reports_changes_until_done(env):
    client = selected(env)
    assert client.send("i IDLE\r\n") == "+ idling\r\n"
    assert client.session.idling
    assert client.session.poll().replies == []
    env.deliver()
    step = client.session.poll()
    assert [str(reply) for reply in step.replies] == ["* 1 EXISTS", "* 1 RECENT"]
    assert client.send("DONE\r\n") == "i OK IDLE terminated\r\n"
    assert not client.session.idling
    client.send("j IDLE\r\n")
    assert client.send("NOPE\r\n") == "j BAD Expected DONE to end IDLE\r\n"


# ---------------------------------------------------------------- two sessions, POP3

def test_two_sessions_see_each_others_changes(env):
    for _ in range(3):
        env.deliver()
    first, second = selected(env), selected(env)
    first.ok("STORE 2 +FLAGS.SILENT (\\Seen \\Deleted)")
    assert "* 2 FETCH (FLAGS (\\Seen \\Deleted))" in second.ok("NOOP")
    first.ok("EXPUNGE")
    # never an EXPUNGE while answering FETCH, STORE or SEARCH (RFC 9051 7.5.1)
    answer = second.command("FETCH 1:3 (FLAGS)")
    assert "EXPUNGE" not in answer and "* 3 FETCH" in answer
    answer = second.command("FETCH 2 BODY[]")
    assert "NO [EXPUNGEISSUED]" in tagged(answer)
    assert "EXPUNGE" not in second.command("SEARCH ALL").replace("EXPUNGEISSUED", "")
    assert untagged(second.ok("NOOP")) == ["* 2 EXPUNGE"]
    assert "* SEARCH 1 2" in second.ok("SEARCH ALL")


def test_pop3_deletion_shows_as_expunge_and_imap_keeps_pop3_uids(env):
    env.deliver()
    env.deliver(b"Subject: two\n\nsecond\n")
    pop = Pop3Session(env.runtime, env.services, ClientInfo("192.0.2.9", 1, "pop3", TLS))
    pop.greeting()
    pop.feed_line(b"USER alice\r\n")
    pop.feed_line(f"PASS {PASSWORD}\r\n".encode())
    uidl_before = b"".join(pop.feed_line(b"UIDL\r\n").body or [])
    client = selected(env)                               # moves both from new/ to cur/
    client.ok("STORE 1 +FLAGS (\\Flagged)")
    assert not os.listdir(env.maildir() / "new")
    assert b"".join(pop.feed_line(b"UIDL\r\n").body or []) == uidl_before
    assert pop.feed_line(b"RETR 2\r\n").replies[0].ok           # follows the renamed file
    pop.feed_line(b"DELE 1\r\n")
    pop.feed_line(b"QUIT\r\n")
    answer = client.ok("NOOP")          # flags first, in the numbers the client still has
    assert untagged(answer) == ["* 2 FETCH (FLAGS (\\Recent \\Seen))", "* 1 EXPUNGE"]
    assert "* 1 FETCH (FLAGS (\\Recent \\Seen))" in client.ok("FETCH 1 FLAGS")
    second = Pop3Session(env.runtime, env.services, ClientInfo("192.0.2.9", 1, "pop3", TLS))
    second.greeting()
    second.feed_line(b"USER alice\r\n")
    second.feed_line(f"PASS {PASSWORD}\r\n".encode())
    assert b"".join(second.feed_line(b"UIDL\r\n").body or []).split(b"\r\n")[0] == \
        uidl_before.split(b"\r\n")[1].replace(b"2 ", b"1 ")


def test_internal_error_is_answered_and_logged(env, monkeypatch):
    client = Client(env).login()

    def broken(session, command):
        raise ZeroDivisionError("boom")
    from lib.imap import session as session_module
    monkeypatch.setitem(session_module.COMMANDS, "NOOP",
                        session_module.Entry(session_module._ANY, broken))
    answer = client.command("NOOP")
    assert answer == "t2 NO [SERVERBUG] Internal server error, try again later\r\n"
    assert "boom" not in answer and env.recorder.events("internal_error")
    assert client.session.state is State.AUTHENTICATED


def test_session_class_matches_the_engine_protocol(env):
    session = ImapSession(env.runtime, env.services, ClientInfo("127.0.0.1", 1, "imap"))
    assert ImapSession.component == "imap"
    assert session.receiving_data is False and session.max_line > 8192
    session.close()
    session.close()                          # twice: nothing happens
    assert session.feed_line(b"a NOOP\r\n").replies == []
    assert PLAIN_MESSAGE and mutf7.encode("Ärger") == "&AMQ-rger"


def test_idle_reports_another_sessions_expunge_and_flags(env):
    for _ in range(3):
        env.deliver()
    idler, other = selected(env), selected(env)
    idler.send("i IDLE\r\n")
    other.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    other.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    step = idler.session.poll()
    assert [str(reply) for reply in step.replies] == [
        "* 1 FETCH (FLAGS (\\Recent \\Flagged))", "* 3 EXPUNGE"]
    assert idler.session.poll().replies == []
    assert idler.send("DONE\r\n") == "i OK IDLE terminated\r\n"


def test_a_folder_deleted_under_a_session_empties_its_view(env):
    watcher = Client(env).login()
    watcher.ok("CREATE Lists")
    watcher.send(b"a APPEND Lists {11+}\r\nSubject: x\n\r\n")
    watcher.ok("SELECT Lists")
    remover = Client(env).login()
    assert "NO [CANNOT]" in tagged(watcher.command("DELETE Lists"))     # its own selection
    remover.ok("DELETE Lists")
    assert untagged(watcher.ok("NOOP")) == ["* 1 EXPUNGE"]


def test_line_too_long_inside_authenticate_answers_its_tag(env):
    client = Client(env)
    client.send("s AUTHENTICATE PLAIN\r\n")
    step = client.session.line_too_long()
    assert str(step.replies[0]).startswith("s BAD [TOOBIG]")
    assert client.session.max_line == 64 * 1024
