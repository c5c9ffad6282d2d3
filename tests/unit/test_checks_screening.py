"""The Screener's memory within one session: SPF asked once per (sender, HELO),
not again for the next message of the same sender; a temporary error asked
again; DMARC's alignment using the same answer when [checks] spf is off."""

from __future__ import annotations

from lib.checks.screening import Screener

from ..helpers.checks import StubResolver, message, screened
from ..helpers.ini import config_text


def screener(load, checks: str, dns: StubResolver) -> Screener:
    return Screener(load(config_text(extra=f"[checks]\n{checks}\n")), None, dns=dns)


def spf_questions(dns: StubResolver) -> int:
    return sum(1 for name, rdtype in dns.asked if rdtype == "TXT" and not name.startswith("_"))


def test_spf_is_asked_once_per_sender_in_a_session(load):
    dns = StubResolver()
    dns.publish_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.publish_txt("example.net", "v=spf1 -all")
    screening = screener(load, "spf = reject", dns)
    first = screening.sender(screened(sender="alice@example.org"))
    asked = spf_questions(dns)
    assert first.result == "pass" and asked >= 1
    again = screening.sender(screened(sender="alice@example.org"))
    assert again == first and spf_questions(dns) == asked
    other = screening.sender(screened(sender="bob@example.net"))
    assert other.result == "fail" and other.refuses and spf_questions(dns) > asked
    assert screening.sender(screened(sender="bob@example.net")).refuses   # kept, still refuses
    # another session starts afresh
    assert screener(load, "spf = reject", dns).sender(screened(sender="alice@example.org")) \
        == first
    assert spf_questions(dns) > asked + 1


def test_a_temporary_error_is_asked_again(load):
    dns = StubResolver()
    dns.failing.add("example.org")
    screening = screener(load, "spf = reject", dns)
    assert screening.sender(screened()).result == "temperror"
    asked = spf_questions(dns)
    dns.failing.clear()
    dns.publish_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    assert screening.sender(screened()).result == "pass"
    assert spf_questions(dns) > asked


def test_dmarc_alone_evaluates_spf_once_for_alignment(load):
    dns = StubResolver()
    dns.publish_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.publish_txt("_dmarc.example.org", "v=DMARC1; p=reject")
    screening = screener(load, "dmarc = reject", dns)
    assert screening.sender(screened()) is None                 # spf off: nothing at MAIL
    for _ in range(3):
        outcome = screening.message(None, message(), screened())
        assert not outcome.refused                             # aligned by SPF
        assert [r.result for r in outcome.results] == ["none", "pass"]
    assert spf_questions(dns) == 1
