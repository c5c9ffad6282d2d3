"""Log lines: key=value formatting that never breaks on odd input."""

from __future__ import annotations

from lib.log.events import format_fields


def test_plain_values_are_bare_and_others_quoted():
    line = format_fields({"event": "rcpt", "to": "<a@b>", "reason": 'no "such" user',
                          "skip": None, "list": ["a", "b"], "flag": True, "empty": ""})
    assert line == 'event=rcpt to=<a@b> reason="no \\"such\\" user" list=a,b flag=yes empty=""'


def test_control_characters_are_escaped():
    assert format_fields({"line": "a\r\nb\tc"}) == 'line="a\\r\\nb\\tc"'


def test_undecodable_client_bytes_become_escapes():
    name = b"\xff\xfeuser".decode("utf-8", "surrogateescape")
    line = format_fields({"user": name})
    assert line == 'user="\\xff\\xfeuser"'
    line.encode("utf-8")          # always writable to a UTF-8 log file


def test_utf8_values_stay_readable():
    assert format_fields({"to": "jösé@example.org"}) == 'to="jösé@example.org"'


def test_control_characters_from_clients_are_escaped():
    not_utf8 = b"\xff".decode("utf-8", "surrogateescape")
    line = format_fields({"helo": "x\x1b[31mred\x1b]0;title\x07", "name": "a\x00b\x7f\x85",
                          "bidi": "abc\u202edef", "bad": not_utf8})
    assert line == ('helo="x\\x1b[31mred\\x1b]0;title\\x07" name="a\\x00b\\x7f\\x85" '
                    'bidi="abc\\u202edef" bad="\\xff"')
    assert line.isprintable()


def test_a_line_from_a_bound_log_has_the_context_once(caplog):
    import logging

    from lib.log.events import LOGGER_NAME, EventLog
    log = EventLog("smtp", logging.getLogger(LOGGER_NAME), session="S1").bind(msg="M1")
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log.info("check", check="spf", reason="a b", nothing=None)
        log.info("accepted", msg="M2")                   # a field given again wins
        log.info("quit", gone=None)                      # no field left: no trailing space
    assert [r.getMessage() for r in caplog.records] == [
        'comp=smtp session=S1 msg=M1 event=check check=spf reason="a b"',
        "comp=smtp session=S1 msg=M2 event=accepted",
        "comp=smtp session=S1 msg=M1 event=quit"]
