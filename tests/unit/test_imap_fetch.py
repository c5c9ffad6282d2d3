"""FETCH: sizes that match the octets sent, body sections and partial
fetches, BODYSTRUCTURE, ENVELOPE, BINARY, \\Seen, and big bodies streamed."""

from __future__ import annotations

import os
import re

import pytest

from lib.imap import fetch as fetch_module
from lib.imap.cache import MessageCache
from lib.store.maildir import pop3_size_of_file

from .imap_driver import Client, make_env, tagged

MULTIPART = b"""From: "Doe, John" <john@example.com>
To: a@example.org, Friends: x@example.net, "Q" <q@example.com>;
Subject: =?utf-8?q?caf=C3=A9?=
Date: Mon, 1 Jan 2024 10:00:00 +0000
Message-ID: <abc@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

preamble
--XX
Content-Type: text/plain; charset=utf-8

hello
world
--XX
Content-Type: message/rfc822

From: inner@example.org
Subject: inner

inner body
--XX
Content-Type: multipart/alternative; boundary=YY

--YY
Content-Type: text/html

<p>x</p>
--YY--
epilogue
--XX
Content-Type: application/octet-stream; name="a.bin"
Content-Disposition: attachment; filename="a.bin"
Content-Transfer-Encoding: base64

AAECAw==
--XX--
trailer
"""


@pytest.fixture
def env(tmp_path, certificate):
    return make_env(tmp_path, certificate)


def opened(env, *messages: bytes) -> Client:
    for message in messages:
        env.deliver(message)
    client = Client(env).login()
    client.ok("SELECT INBOX")
    return client


def literal(answer: str, label: str) -> str:
    """The octets of the literal that follows `label` in a FETCH response."""
    match = re.search(re.escape(label) + r" \{(\d+)\}\r\n", answer)
    assert match, (label, answer[:300])
    start = match.end()
    return answer[start:start + int(match.group(1))]


def size_of(answer: str) -> int:
    return int(re.search(r"RFC822\.SIZE (\d+)", answer).group(1))


def test_size_matches_body_octets_and_pop3(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    body = literal(answer, "BODY[]")
    assert size_of(answer) == len(body.encode()) == len(MULTIPART.replace(b"\n", b"\r\n"))
    assert body.encode() == MULTIPART.replace(b"\n", b"\r\n")
    [message] = env.services.store.snapshot("alice")
    assert message.size == size_of(answer)


@pytest.mark.parametrize("content", [b"Subject: crlf\r\n\r\nbody\r\n", b"Subject: lf\n\nbody",
                                     b"Subject: cr\r\n\r\nbare\rcr\r\r\n", b""])
def test_foreign_files_count_as_pop3_does(env, content):
    new = env.maildir() / "new"
    os.makedirs(new, exist_ok=True)
    (new / "1700000000.M1P1.elsewhere").write_bytes(content)
    client = opened(env)
    answer = client.ok("FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    body = literal(answer, "BODY[]").encode("utf-8", "surrogateescape")
    [name] = os.listdir(env.maildir() / "cur")
    assert size_of(answer) == len(body) == pop3_size_of_file(env.maildir() / "cur" / name)


def test_header_text_and_header_fields(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] "
                       "BODY.PEEK[HEADER.FIELDS (subject DATE)] "
                       "BODY.PEEK[HEADER.FIELDS.NOT (From To Subject Date Message-ID)])")
    header, text = MULTIPART.split(b"\n\n", 1)
    assert literal(answer, "BODY[HEADER]") == (header + b"\n\n").replace(b"\n", b"\r\n").decode()
    assert literal(answer, "BODY[TEXT]") == text.replace(b"\n", b"\r\n").decode()
    assert literal(answer, "BODY[HEADER.FIELDS (SUBJECT DATE)]") == \
        "Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    assert literal(answer, "BODY[HEADER.FIELDS.NOT (FROM TO SUBJECT DATE MESSAGE-ID)]") == \
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"


def test_parts_mime_and_encapsulated_messages(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2] "
                       "BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1] BODY.PEEK[3.1] "
                       "BODY.PEEK[4] BODY.PEEK[9] BODY.PEEK[1.TEXT])")
    assert literal(answer, "BODY[1]") == "hello\r\nworld"
    assert literal(answer, "BODY[1.MIME]") == "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert literal(answer, "BODY[2]") == \
        "From: inner@example.org\r\nSubject: inner\r\n\r\ninner body"
    assert literal(answer, "BODY[2.HEADER]") == \
        "From: inner@example.org\r\nSubject: inner\r\n\r\n"
    assert literal(answer, "BODY[2.TEXT]") == literal(answer, "BODY[2.1]") == "inner body"
    assert literal(answer, "BODY[3.1]") == "<p>x</p>"
    assert literal(answer, "BODY[4]") == "AAECAw=="
    assert "BODY[9] NIL" in answer and "BODY[1.TEXT] NIL" in answer


def test_partial_fetches(env):
    client = opened(env, MULTIPART)
    whole = literal(client.ok("FETCH 1 BODY.PEEK[]"), "BODY[]")
    answer = client.ok("FETCH 1 (BODY.PEEK[]<10.20> BODY.PEEK[TEXT]<0.5> "
                       "BODY.PEEK[]<100000.5> BODY.PEEK[HEADER.FIELDS (To)]<2.3>)")
    assert literal(answer, "BODY[]<10>") == whole[10:30]
    assert literal(answer, "BODY[TEXT]<0>") == "pream"
    assert 'BODY[]<100000> {0}\r\n' in answer
    assert literal(answer, "BODY[HEADER.FIELDS (TO)]<2>") == ": a"


def test_bodystructure_sizes_match_the_parts(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 (BODYSTRUCTURE BODY)")
    assert '("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)' in answer
    assert '("APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 8 NIL ' \
           '("ATTACHMENT" ("FILENAME" "a.bin")) NIL NIL)' in answer
    assert '"MIXED" ("BOUNDARY" "XX") NIL NIL NIL)' in answer
    assert '("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 53 (NIL "inner" ' in answer
    assert ' BODY (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 1)(' in answer
    parts = client.ok("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[4])")
    assert len(literal(parts, "BODY[1]")) == 12 and len(literal(parts, "BODY[2]")) == 53
    assert len(literal(parts, "BODY[4]")) == 8


def test_simple_message_structure_and_envelope(env):
    client = opened(env, b"Subject: plain\nFrom: a@b.c\n\nline one\nline two\n")
    answer = client.ok("FETCH 1 (BODYSTRUCTURE ENVELOPE)")
    assert 'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2 ' \
           'NIL NIL NIL NIL)' in answer
    assert 'ENVELOPE (NIL "plain" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ' \
           '((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL)' in answer


def test_envelope_groups_quotes_and_defaults(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 ENVELOPE")
    assert '("Mon, 1 Jan 2024 10:00:00 +0000" "=?utf-8?q?caf=C3=A9?=" ' \
           '(("Doe, John" NIL "john" "example.com")) (("Doe, John" NIL "john" "example.com")) ' \
           '(("Doe, John" NIL "john" "example.com")) ((NIL NIL "a" "example.org")' \
           '(NIL NIL "Friends" NIL)(NIL NIL "x" "example.net")("Q" NIL "q" "example.com")' \
           '(NIL NIL NIL NIL)) NIL NIL NIL "<abc@example.com>")' in answer
    name = os.listdir(env.maildir() / "cur")[0].split(":")[0]
    assert MessageCache.of(env.mailstore).get("envelope", name) is not None


def test_binary_fetch_decodes(env):
    client = opened(env, MULTIPART)
    answer = client.ok("FETCH 1 (BINARY.PEEK[4] BINARY.SIZE[4] BINARY.PEEK[1])")
    assert "BINARY[4] ~{4}\r\n\x00\x01\x02\x03" in answer
    assert "BINARY.SIZE[4] 4" in answer and literal(answer, "BINARY[1]") == "hello\r\nworld"


def test_body_sets_seen_and_peek_does_not(env):
    client = opened(env, MULTIPART, MULTIPART)
    answer = client.ok("FETCH 1 BODY.PEEK[1]")
    assert "FLAGS" not in answer
    answer = client.ok("FETCH 1:2 (BODY[1])")
    assert answer.count("FLAGS (\\Recent \\Seen)") == 2
    assert "FLAGS" not in client.ok("FETCH 1 BODY[1]")          # already seen
    assert all(name.endswith(":2,S") for name in os.listdir(env.maildir() / "cur"))


def test_uid_fetch_includes_uid_and_internaldate(env):
    client = opened(env, MULTIPART)
    os.utime(env.maildir() / "cur" / os.listdir(env.maildir() / "cur")[0], (0, 1700000000))
    answer = client.ok("UID FETCH 1:* (INTERNALDATE)")
    assert re.match(r'\* 1 FETCH \(UID 1 INTERNALDATE "(14|15)-Nov-2023 \d\d:13:20 [+-]\d{4}"\)',
                    answer), answer
    assert tagged(client.command("UID FETCH 5 FLAGS")).endswith("OK UID FETCH completed")


def test_big_bodies_are_streamed(env, monkeypatch):
    monkeypatch.setattr(fetch_module, "STREAM_OVER", 1000)
    big = b"Subject: big\n\n" + b"0123456789abcdef\n" * 50_000
    client = opened(env, big)
    step = client.session.feed_line(b"a FETCH 1 (RFC822.SIZE BODY[] BODY[TEXT]<5.100000>)\r\n")
    chunks = list(step.body)
    assert len(chunks) > 4 and max(map(len, chunks)) <= 2 * 256 * 1024
    answer = b"".join(chunks).decode()
    wire = big.replace(b"\n", b"\r\n").decode()
    assert literal(answer, "BODY[]") == wire and size_of(answer) == len(wire)
    assert literal(answer, "BODY[TEXT]<5>") == wire[len("Subject: big\r\n\r\n") + 5:][:100_000]
    assert answer.endswith("a OK FETCH completed\r\n")
