"""Authentication-Results (RFC 8601): the header we add, and the removal of
forged ones that carry our authserv-id while others are kept."""

from __future__ import annotations

import pytest

from lib.checks import authresults
from lib.checks.verdict import CheckResult

OURS = "mail.example.org"


def result(check, auth):
    return CheckResult(check, "pass", "", auth=auth)


def test_one_header_with_a_line_per_clause():
    field = authresults.header_field(OURS, [
        result("spf", "spf=pass smtp.mailfrom=example.org"),
        result("dnsbl", None),
        result("dkim", "dkim=pass header.d=example.org header.s=a; "
                       "dkim=fail (body hash) header.d=list.example header.s=b"),
        result("dmarc", "dmarc=pass (p=reject dis=none) header.from=example.org"),
    ])
    assert field == (b"Authentication-Results: mail.example.org;\r\n"
                     b"\tspf=pass smtp.mailfrom=example.org;\r\n"
                     b"\tdkim=pass header.d=example.org header.s=a;\r\n"
                     b"\tdkim=fail (body hash) header.d=list.example header.s=b;\r\n"
                     b"\tdmarc=pass (p=reject dis=none) header.from=example.org\r\n")


def test_no_clause_at_all_says_none():
    assert authresults.header_value(OURS, [result("dnsbl", None)]) == f"{OURS}; none"


def test_semicolons_inside_comments_and_quotes_do_not_split_a_clause():
    assert authresults.clauses([result("x", 'dkim=fail (a; b) header.d="x;y"; spf=none')]) == [
        'dkim=fail (a; b) header.d="x;y"', "spf=none"]


def test_a_clause_cannot_break_the_header_with_a_newline():
    field = authresults.header_field(OURS, [result("spf", "spf=pass\r\nX-Evil: 1")])
    assert field.count(b"\r\n") == 2 and b"\r\nX-Evil" not in field


@pytest.mark.parametrize("value, expected", [
    (" mail.example.org; spf=pass", "mail.example.org"),
    ("mail.example.org 1; none", "mail.example.org"),
    (" (a comment (nested)) mail.example.org;", "mail.example.org"),
    ('\r\n\t"mail.example.org"; spf=pass', "mail.example.org"),
    (" mail.example.org", "mail.example.org"),
    ("  ", None),
    (" ; spf=pass", None),
])
def test_authserv_id(value, expected):
    assert authresults.authserv_id(value) == expected


def header(*fields: str, body: str = "Body line\r\n", ending: str = "\r\n") -> bytes:
    text = "".join(f + "\r\n" for f in fields) + "\r\n" + body
    return text.replace("\r\n", ending).encode()


def test_forged_headers_with_our_id_are_removed_and_others_kept():
    message = header(
        "Received: from x by y",
        "Authentication-Results: mail.example.org; spf=pass smtp.mailfrom=bank.example",
        "authentication-results: MAIL.Example.ORG.;",
        "\tdkim=pass header.d=bank.example",
        "Authentication-Results: (forged) \"mail.example.org\" 1; dmarc=pass",
        "Authentication-Results : mail.example.org; spf=pass",
        "Authentication-Results: mx.google.example; spf=pass smtp.mailfrom=example.net",
        "Authentication-Results: mail.example.org.evil.example; spf=pass",
        "Authentication-Results: xmail.example.org; spf=pass",
        "Subject: hello",
        body="Authentication-Results: mail.example.org; in the body stays\r\n")
    assert authresults.remove_ours(message, OURS) == header(
        "Received: from x by y",
        "Authentication-Results: mx.google.example; spf=pass smtp.mailfrom=example.net",
        "Authentication-Results: mail.example.org.evil.example; spf=pass",
        "Authentication-Results: xmail.example.org; spf=pass",
        "Subject: hello",
        body="Authentication-Results: mail.example.org; in the body stays\r\n")


def test_a_folded_forged_header_goes_whole():
    message = header("Subject: a",
                     "Authentication-Results:",
                     "  mail.example.org;",
                     "  spf=pass smtp.mailfrom=bank.example",
                     "To: b@example.org")
    assert authresults.remove_ours(message, OURS) == header("Subject: a", "To: b@example.org")


def test_bare_lf_messages_and_header_only_messages():
    lf = header("Authentication-Results: mail.example.org; none", "Subject: x", ending="\n")
    assert authresults.remove_ours(lf, OURS) == header("Subject: x", ending="\n")
    only = b"Subject: x\r\nAuthentication-Results: mail.example.org; none\r\n"
    assert authresults.remove_ours(only, OURS) == b"Subject: x\r\n"


def test_a_message_without_ours_is_unchanged():
    message = header("Subject: x", "Authentication-Results: other.example; none")
    assert authresults.remove_ours(message, OURS) == message
