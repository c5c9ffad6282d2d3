"""The scanner clients without a daemon: spamd's headers, rspamd's JSON and
clamd's reply lines parsed, each answer judged into a CheckResult, the
requests framed, and every failure put in words."""

from __future__ import annotations

import email.header
import io
import json
import struct
import time

import pytest

from lib.checks import clamd, rspamd, scanner_io, spamd
from lib.checks.scanner_io import DaemonError, Deadline, Garbled
from lib.checks.verdict import ERROR, Screened
from lib.core import replies

SCREENED = Screened(client_ip="192.0.2.7", helo="mx.example.com", sender="sender@example.com",
                    recipients=("alice@example.org", "bob@example.org"), msg_id="1A2B3C",
                    hostname="mail.example.org")


# ---------------------------------------------------------------- spamd

GTUBE_SYMBOLS = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
                 b"GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO")


def test_spamd_symbols_answer_is_parsed():
    answer = spamd.parse_answer(GTUBE_SYMBOLS)
    assert answer == spamd.SpamdAnswer(spam=True, score=1000.0, threshold=5.0, rules=(
        "GTUBE", "MSGID_SHORT", "NO_RECEIVED", "NO_RELAYS", "TVD_SPACE_RATIO"))


@pytest.mark.parametrize("raw, expected", [
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.0 / 5.0\r\nContent-length: 0\r\n\r\n",
     spamd.SpamdAnswer(False, -0.0, 5.0, ())),
    # LF-only lines, Yes/No instead of True/False, headers in any case
    (b"SPAMD/1.5 0 EX_OK\nspam: yes ; 6.1 / 5.0\n\nBAYES_99\n",
     spamd.SpamdAnswer(True, 6.1, 5.0, ("BAYES_99",))),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: No ; 2 / 7.5\r\n\r\n", spamd.SpamdAnswer(False, 2.0, 7.5, ())),
])
def test_spamd_answer_variants(raw, expected):
    assert spamd.parse_answer(raw) == expected


def test_spamd_rule_list_keeps_only_rule_names():
    raw = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\n\r\nGTUBE,\r\nX-Evil: yes,<b>,OK_RULE"
    assert spamd.parse_answer(raw).rules == ("GTUBE", "OK_RULE")


def test_spamd_content_length_cuts_the_body():
    raw = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 9.0 / 5.0\r\n\r\nGTUBE,MORE"
    assert spamd.parse_answer(raw).rules == ("GTUBE",)


def test_spamd_error_status_is_a_daemon_error():
    with pytest.raises(DaemonError, match="76 Bad header line"):
        spamd.parse_answer(b"SPAMD/1.0 76 Bad header line: (EOF)\r\n\r\n")


@pytest.mark.parametrize("raw, why", [
    (b"", "an empty answer"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n", "no end of the headers"),
    (b"HTTP/1.1 200 OK\r\nSpam: True ; 1.0 / 5.0\r\n\r\n", "status line"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n\r\nA,B", "no Spam: header"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; lots / 5.0\r\n\r\n", "Spam: 'maybe"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\nno colon here\r\n\r\n", "header line"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\nContent-length: 99\r\n\r\nGTUBE",
     "cut short"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0\r\nContent-length: x\r\n\r\n",
     "Content-length"),
])
def test_spamd_garbled_answers(raw, why):
    with pytest.raises(Garbled, match=why):
        spamd.parse_answer(raw)


@pytest.mark.parametrize("score, reject, verdict", [
    (1000.0, 10.0, "refused"),
    (10.0, 10.0, "refused"),              # at the reject score: refused
    (9.9, 10.0, "tagged"),
    (5.0, 10.0, "tagged"),                # at spamd's threshold (spamd says True)
    (4.0, 3.0, "refused"),                # a reject score below spamd's threshold
    (4.9, 10.0, "ham"),
])
def test_spamd_judgement(score, reject, verdict):
    answer = spamd.SpamdAnswer(spam=score >= 5.0, score=score, threshold=5.0,
                               rules=("GTUBE", "NO_RELAYS"))
    result = spamd.judge(answer, reject)
    assert result.check == "spamd"
    if verdict == "refused":
        assert (result.result, result.reply) == ("spam", replies.SPAM_REJECTED)
    elif verdict == "tagged":
        assert (result.result, result.reply, result.junk) == ("spam", None, True)
        assert result.headers == (
            ("X-Spam-Flag", "YES"),
            ("X-Spam-Status", f"Yes, score={score:.1f} required=5.0 tests=GTUBE,NO_RELAYS"))
    else:
        assert (result.result, result.reply, result.junk) == ("ham", None, False)
        assert result.headers == (
            ("X-Spam-Status", f"No, score={score:.1f} required=5.0 tests=GTUBE,NO_RELAYS"),)


def test_spamd_status_without_rules_says_none():
    assert spamd.status(spamd.SpamdAnswer(False, 0.1, 5.0, ())) == \
        "No, score=0.1 required=5.0 tests=none"


def test_spam_status_is_cut_at_a_comma_to_fit_one_header_line():
    rules = tuple(f"RULE_NUMBER_{n:03d}" for n in range(200))
    value = scanner_io.spam_status(True, "12.0", "5.0", rules)
    assert len(value) <= scanner_io.MAX_STATUS
    assert value.endswith(",...")
    assert all(name in rules for name in value.split("tests=")[1].split(",")[:-1])


def test_spamd_request_says_the_size_and_sends_the_file_as_stored():
    message = b"Subject: x\n\nbody\n" * 10000           # LF endings, several chunks
    sent = b"".join(spamd._request(io.BytesIO(message), len(message)))
    assert sent == f"SYMBOLS SPAMC/1.5\r\nContent-length: {len(message)}\r\n\r\n".encode() \
        + message


# ---------------------------------------------------------------- rspamd

def rspamd_json(action: str, score: float = 15.0, **extra) -> bytes:
    result = {"is_skipped": False, "score": score, "required_score": 15.0, "action": action,
              "symbols": {"GTUBE": {"name": "GTUBE", "score": 0.0}}, "messages": {},
              "message-id": "1@example.org", **extra}
    return json.dumps(result).encode()


def test_rspamd_answer_is_parsed():
    answer = rspamd.parse_answer(200, rspamd_json(
        "rewrite subject", 8.0, subject="***SPAM*** Hi", messages={"smtp_message": "Gtube"}))
    assert answer == rspamd.RspamdAnswer(action="rewrite subject", score=8.0, required=15.0,
                                         symbols=("GTUBE",), subject="***SPAM*** Hi",
                                         message="Gtube")


@pytest.mark.parametrize("action, result, reply, junk", [
    ("reject", "spam", replies.SPAM_REJECTED, False),
    ("discard", "spam", replies.SPAM_REJECTED, False),
    ("soft reject", "defer", replies.SPAM_DEFERRED, False),
    ("greylist", "defer", replies.SPAM_DEFERRED, False),
    ("add header", "spam", None, True),
    ("rewrite subject", "spam", None, True),
    ("quarantine", "spam", None, True),
    ("no action", "ham", None, False),
])
def test_rspamd_action_decides(action, result, reply, junk):
    judged = rspamd.judge(rspamd.parse_answer(200, rspamd_json(action, 7.5)))
    assert (judged.check, judged.result, judged.reply, judged.junk) == ("rspamd", result, reply,
                                                                       junk)
    assert judged.reason.startswith(f"action {action}, score 7.50 of 15.00 (GTUBE)")
    if junk:
        assert judged.headers[:2] == (("X-Spam-Flag", "YES"),
                                      ("X-Spam-Status", "Yes, score=7.50 required=15.00 "
                                                        "tests=GTUBE"))
    else:
        assert judged.headers == ()


def test_rspamd_rewrite_subject_replaces_the_subject():
    judged = rspamd.judge(rspamd.parse_answer(200, rspamd_json(
        "rewrite subject", 8.0, subject="***SPAM*** Cheap\r\nBcc: victim@example.org")))
    assert dict(judged.headers)[rspamd.SUBJECT] == \
        "***SPAM*** Cheap Bcc: victim@example.org"       # folded into one line, not a header


def test_rspamd_non_ascii_subject_is_encoded_in_short_words():
    subject = "***SPAM*** Grüße aus München, günstige Uhren für alle! " * 2
    encoded = rspamd.encode_subject(subject)
    assert encoded.isascii() and "\n" not in encoded
    assert all(len(word) <= 75 for word in encoded.split())
    decoded = str(email.header.make_header(email.header.decode_header(encoded)))
    assert decoded == " ".join(subject.split())


def test_rspamd_add_header_has_no_subject():
    judged = rspamd.judge(rspamd.parse_answer(200, rspamd_json("add header", 6.0,
                                                               subject="ignored")))
    assert rspamd.SUBJECT not in dict(judged.headers)


def test_rspamd_error_answers_are_daemon_errors():
    with pytest.raises(DaemonError, match="Message is empty"):
        rspamd.parse_answer(400, b'{"error": "Message is empty"}')
    with pytest.raises(DaemonError, match="HTTP status 503"):
        rspamd.parse_answer(503, b"<html>Service Unavailable</html>")
    with pytest.raises(DaemonError, match="HTTP status 500"):
        rspamd.parse_answer(500, rspamd_json("reject"))


@pytest.mark.parametrize("raw, why", [
    (b"", "not JSON"),
    (b"<html>", "not JSON"),
    (b"[1, 2]", "not an object"),
    (rspamd_json("launch missiles"), "action 'launch missiles'"),
    (b'{"action": "reject", "score": "high", "required_score": 15}', "score 'high'"),
    (b'{"action": "reject", "score": true, "required_score": 15}', "score 'True'"),
    (b'{"action": "reject", "score": 20}', "required_score 'None'"),
])
def test_rspamd_garbled_answers(raw, why):
    with pytest.raises(Garbled, match=why):
        rspamd.parse_answer(200, raw)


def test_rspamd_envelope_headers():
    headers = rspamd.request_headers(SCREENED, 1234)
    assert headers == [("Content-Length", b"1234"), ("IP", b"192.0.2.7"),
                       ("Helo", b"mx.example.com"), ("From", b"sender@example.com"),
                       ("Rcpt", b"alice@example.org"), ("Rcpt", b"bob@example.org"),
                       ("Queue-Id", b"1A2B3C"), ("MTA-Name", b"mail.example.org")]
    assert "Hostname" not in dict(headers)    # that is the client's PTR name: unknown here


def test_rspamd_envelope_null_sender_utf8_and_no_header_injection():
    screened = Screened(client_ip="2001:db8::7", helo="", sender="",
                        recipients=("jörg@exämple.org", "x@example.org\r\nSettings: {}"),
                        msg_id="Q1", hostname="mail.example.org")
    headers = rspamd.request_headers(screened, 1)
    assert ("From", b"<>") in headers
    assert "Helo" not in dict(headers)        # an empty HELO is left out
    assert ("Rcpt", "jörg@exämple.org".encode()) in headers
    assert ("Rcpt", b"x@example.org??Settings: {}") in headers


# ---------------------------------------------------------------- clamd

@pytest.mark.parametrize("raw, virus", [
    (b"stream: OK\0", None),
    (b"stream: OK\n", None),                  # the n-prefixed commands end lines in LF
    (b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0", "Eicar-Test-Signature.UNOFFICIAL"),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", "Win.Test.EICAR_HDB-1"),
    (b"stream: Heuristics.Phishing.Email.SpoofedDomain FOUND\0",
     "Heuristics.Phishing.Email.SpoofedDomain"),
])
def test_clamd_answers(raw, virus):
    assert clamd.parse_answer(raw) == clamd.ClamdAnswer(virus=virus)


@pytest.mark.parametrize("raw, why", [
    (b"INSTREAM size limit exceeded. ERROR\0", "INSTREAM size limit exceeded."),
    (b"stream: Can't allocate memory ERROR\0", "Can't allocate memory"),
    (b"ERROR\0", "ERROR"),
])
def test_clamd_error_lines_are_daemon_errors(raw, why):
    with pytest.raises(DaemonError) as raised:
        clamd.parse_answer(raw)
    assert str(raised.value) == why


@pytest.mark.parametrize("raw", [
    b"", b"\0", b"PONG\0", b"stream: OK\0stream: OK\0",
    b"stream: Evil\r\nName FOUND\0", b"UNKNOWN COMMAND\0",
])
def test_clamd_garbled_answers(raw):
    with pytest.raises(Garbled):
        clamd.parse_answer(raw)


def test_clamd_virus_is_refused_with_its_name():
    result = clamd.judge(clamd.ClamdAnswer(virus="Eicar-Test-Signature"))
    assert (result.check, result.result) == ("clamd", "virus")
    assert result.reply == replies.VIRUS_FOUND.fill(virus="Eicar-Test-Signature")
    assert result.reply.code == 554 and "Eicar-Test-Signature" in result.reply.text
    clean = clamd.judge(clamd.ClamdAnswer(virus=None))
    assert (clean.result, clean.reply) == ("clean", None)


def test_clamd_virus_name_is_made_printable():
    answer = clamd.parse_answer("stream: Bad\x07Näme FOUND\0".encode())
    assert answer.virus == "Bad?N?me"


def test_clamd_instream_framing():
    message = bytes(range(256)) * 600           # 153600 octets: three chunks
    sent = b"".join(clamd._request(io.BytesIO(message), len(message)))
    assert sent.startswith(b"zINSTREAM\0")
    rest, chunks = sent[len(b"zINSTREAM\0"):], []
    while True:
        (length,) = struct.unpack(">I", rest[:4])
        if length == 0:
            break
        chunks.append(rest[4:4 + length])
        rest = rest[4 + length:]
    assert rest == b"\0\0\0\0"
    assert b"".join(chunks) == message
    assert [len(c) for c in chunks] == [65536, 65536, 153600 - 2 * 65536]


# ---------------------------------------------------------------- shared plumbing

def test_a_message_file_that_shrinks_is_not_taken_for_network_trouble():
    with pytest.raises(RuntimeError, match="ended 10 octets early"):
        list(scanner_io.pieces(io.BytesIO(b"12345"), 15))


def test_deadline_runs_out():
    deadline = Deadline(0.05)
    assert 0 < deadline.left() <= 0.05
    time.sleep(0.06)
    with pytest.raises(TimeoutError):
        deadline.left()


@pytest.mark.parametrize("error, words", [
    (TimeoutError(), "no answer within 2.5s"),
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (FileNotFoundError(2, "No such file or directory"), "no such socket"),
    (ConnectionResetError(104, "Connection reset by peer"), "connection closed by the daemon"),
    (BrokenPipeError(32, "Broken pipe"), "connection closed by the daemon"),
    (PermissionError(13, "Permission denied"), "permission denied"),
])
def test_failures_in_words(error, words):
    result = scanner_io.failure("clamd", "/run/clamav/clamd.ctl", error, Deadline(2.5))
    assert (result.check, result.result, result.reply) == ("clamd", ERROR, None)
    assert result.reason == f"cannot reach clamd at /run/clamav/clamd.ctl: {words}"


def test_daemon_errors_and_garbled_answers_in_words():
    said = scanner_io.failure("clamd", "127.0.0.1:3310", DaemonError("size limit"), Deadline(1))
    assert said.reason == "clamd at 127.0.0.1:3310 could not scan the message: size limit"
    odd = scanner_io.failure("spamd", "127.0.0.1:783", Garbled("no Spam: header"), Deadline(1))
    assert odd.reason == "spamd at 127.0.0.1:783 gave an unreadable answer: no Spam: header"
    assert odd.failed_to_run and said.failed_to_run


def test_printable_keeps_one_line_of_ascii():
    assert scanner_io.printable("a\r\nb\x00c\u00e9d", 5) == "a??b?"
