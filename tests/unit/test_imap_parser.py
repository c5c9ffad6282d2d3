"""The IMAP command grammar: tags, atoms, strings, literals, sequence sets,
FETCH attributes, SEARCH keys, LIST options; malformed input is a ParseError
that says whether the BAD can be tagged."""

from __future__ import annotations

import datetime

import pytest

from lib.imap.items import STAR, BinarySize, BodyItem, SearchKey, Section, SequenceSet
from lib.imap.lexer import ParseError, Reader
from lib.imap.parser import AppendArgs, ListArgs, StoreArgs, append_target, parse_command


def parse(*segments: bytes, literals=()):
    return parse_command(list(segments), list(literals))


def test_tag_name_and_uid_commands():
    command = parse(b"A001 uid fetch 1:* flags")
    assert (command.tag, command.name, command.uid) == ("A001", "UID FETCH", True)
    assert parse(b"x.1 NOOP").name == "NOOP"


@pytest.mark.parametrize("line, tagged", [
    (b"", False), (b"+x NOOP", False), (b"(a NOOP", False), (b"a", True),
    (b"a XYZZY", True), (b"a NOOP extra", True), (b"a UID", True),
    (b"a LOGIN", True), (b'a LOGIN "unterminated', True), (b'a LOGIN "bad\\escape" x', True),
    (b"a FETCH 0 FLAGS", True), (b"a FETCH 1 (FLAGS", True), (b"a FETCH 1 ()", True),
    (b"a FETCH 1 BODY[1.MIME.X]", True), (b"a FETCH 1 BODY[MIME]", True),
    (b"a FETCH 1 FOO", True), (b"a SEARCH", True), (b"a SEARCH FOO", True),
    (b"a SEARCH SINCE 30-Feb-2024", True), (b"a STORE 1 FLAGZ (\\Seen)", True),
    (b"a APPEND INBOX", True), (b"a STATUS INBOX (BOGUS)", True),
    (b"a LIST (BOGUS) \"\" *", True), (b"a FETCH 99999999999 FLAGS", True)])
def test_malformed_commands(line, tagged):
    with pytest.raises(ParseError) as caught:
        parse(line)
    assert (caught.value.tag is not None) == tagged


def test_strings_quoted_literal_and_atom():
    assert parse(b'a LOGIN "al\\"ice" "pass\\\\word"').args == ('al"ice', "pass\\word")
    with pytest.raises(ParseError):
        parse(b"a LOGIN alice pass\\word")            # a backslash is no atom character
    assert parse(b"a LOGIN {5}", b" {3+}", b"", literals=[b"alice", b"p w"]).args == \
        ("alice", "p w")
    assert parse(b'a LOGIN "caf\xc3\xa9" x').args[0] == "café"


def test_literal_must_end_its_segment():
    with pytest.raises(ParseError):
        parse(b"a LOGIN {5} x")
    reader = Reader([b"{5}", b""], [b"hello"])
    assert reader.string() == b"hello" and reader.at_end()


def test_sequence_sets():
    assert parse(b"a FETCH 1,3:5,7:*,* UID").args[0] == \
        SequenceSet(((1, 1), (3, 5), (7, STAR), (STAR, STAR)))
    assert parse(b"a FETCH $ UID").args[0] == SequenceSet(saved=True)


def test_fetch_items_and_macros():
    _, items = parse(b"a FETCH 1 ALL").args
    assert items == ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")
    _, items = parse(b"a FETCH 1 (uid BODY.PEEK[1.2.HEADER.FIELDS.NOT (x-a From)]<5.10> "
                     b"BODY[] BODY[TEXT] BODY[3.MIME] BINARY.PEEK[1.2] BINARY.SIZE[1] "
                     b"RFC822.HEADER BODYSTRUCTURE)").args
    assert items == (
        "UID",
        BodyItem(Section((1, 2), "HEADER.FIELDS.NOT", ("X-A", "FROM")), peek=True,
                 partial=(5, 10)),
        BodyItem(Section()), BodyItem(Section(text="TEXT")), BodyItem(Section((3,), "MIME")),
        BodyItem(Section((1, 2)), peek=True, binary=True), BinarySize((1,)),
        "RFC822.HEADER", "BODYSTRUCTURE")


def test_a_fetch_list_seen_before_parses_the_same_and_trailing_text_still_fails():
    first = parse(b"a FETCH 1 (BODY.PEEK[] FLAGS)").args
    again = parse(b"b FETCH 2:4 (BODY.PEEK[] FLAGS)").args
    assert again[1] == first[1] == (BodyItem(Section(), peek=True), "FLAGS")
    assert again[0] == SequenceSet(((2, 4),))
    for _ in range(2):
        with pytest.raises(ParseError, match="extra"):
            parse(b"c FETCH 1 (BODY.PEEK[] FLAGS) junk")
    assert parse(b"d FETCH 1 (body.peek[] flags)").args[1] == first[1]


def test_search_keys():
    args = parse(b'a SEARCH CHARSET utf-8 OR FROM "Ann" NOT SEEN (SINCE "1-Feb-2024" '
                 b"LARGER 10) UID 1:3 2,4 HEADER X-Spam yes").args
    assert args.charset == "UTF-8" and args.returns is None
    key = args.key
    assert key.op == "AND" and key.args[0] == SearchKey("OR", (
        SearchKey("HEADER", ("FROM", "Ann")), SearchKey("NOT", (SearchKey("FLAG", ("S", True)),))))
    assert key.args[1] == SearchKey("AND", (
        SearchKey("SINCE", (datetime.date(2024, 2, 1),)), SearchKey("LARGER", (10,))))
    assert key.args[2] == SearchKey("UID", (SequenceSet(((1, 3),)),))
    assert key.args[3] == SearchKey("SEQ", (SequenceSet(((2, 2), (4, 4))),))
    assert key.args[4] == SearchKey("HEADER", ("X-SPAM", "yes"))
    returned = parse(b"a UID SEARCH RETURN (min COUNT save) UNSEEN").args
    assert returned.returns == ("MIN", "COUNT", "SAVE")


def test_search_nesting_is_bounded():
    with pytest.raises(ParseError):
        parse(b"a SEARCH " + b"NOT " * 60 + b"ALL")


def test_store_and_copy():
    assert parse(b"a STORE 2:4 -FLAGS.SILENT (\\Seen \\Deleted)").args == \
        StoreArgs(SequenceSet(((2, 4),)), "-", True, ("\\Seen", "\\Deleted"))
    assert parse(b"a STORE 1 FLAGS \\Flagged $Junk").args.flags == ("\\Flagged", "$Junk")
    assert parse(b'a UID MOVE 1:* "Trash"').args == (SequenceSet(((1, STAR),)), "Trash")


def test_list_forms():
    assert parse(b'a LIST "" %').args == ListArgs("", ("%",))
    args = parse(b'a LIST (SUBSCRIBED) "" ("INBOX" Sent*) RETURN (CHILDREN STATUS '
                 b"(MESSAGES UNSEEN))").args
    assert args.select == {"SUBSCRIBED"} and args.patterns == ("INBOX", "Sent*")
    assert args.returns == {"CHILDREN", "STATUS"} and args.status == ("MESSAGES", "UNSEEN")
    assert args.extended


def test_append_and_its_message_literal():
    segments = [b'a APPEND Drafts (\\Seen) " 5-Mar-2024 14:30:00 +0100" {4+}']
    assert append_target(segments, []) == "Drafts"
    args = parse(segments[0], b"", literals=[b"data"]).args
    assert args == AppendArgs("Drafts", ("\\Seen",), 1709645400, b"data")
    assert parse(b"a APPEND x ~{4}", b"", literals=[b"da\0a"]).args.message == b"da\0a"
    assert append_target([b"a LOGIN {5}"], []) is None
    assert append_target([b"a APPEND {5}"], []) is None      # the literal is the name
    assert append_target([b"a APPEND {5}", b" {3}"], [b"INBOX"]) == "INBOX"
    with pytest.raises(ParseError):
        parse(b"a LOGIN ~{4}", b" x", literals=[b"abcd"])   # literal8 only in APPEND


def test_id_enable_authenticate():
    assert parse(b'a ID ("name" "mutt" "version" NIL)').args == {"name": "mutt",
                                                                  "version": None}
    assert parse(b"a ID nil").args is None
    assert parse(b"a ENABLE IMAP4rev2 UTF8=ACCEPT").args == ("IMAP4REV2", "UTF8=ACCEPT")
    assert parse(b"a AUTHENTICATE plain AGFsaWNl").args == ("PLAIN", "AGFsaWNl")
    assert parse(b"a AUTHENTICATE PLAIN =").args == ("PLAIN", "=")
