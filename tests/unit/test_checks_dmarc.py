"""DKIM verification and DMARC (RFC 6376, RFC 7489) against a stub resolver:
signatures made in the test with dkimpy, policies, alignment, the
organisational domain from the public suffix list, the From: rules."""

from __future__ import annotations

import pytest

from lib.checks import dmarc
from lib.core.replies import DMARC_REJECTED

from ..helpers.checks import StubResolver, dkim_key, make_key_pem, message, screened

OUTSIDE = "198.51.100.9"          # not allowed by any SPF record below


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dkim")
    return [make_key_pem(folder) for _ in range(2)]


@pytest.fixture
def resolver():
    stub = StubResolver()
    stub.publish_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    stub.publish_txt("bounce.example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    stub.publish_txt("_dmarc.example.org", "v=DMARC1; p=reject; rua=mailto:d@example.org")
    return stub


def publish(resolver, pem, domain, selector="sel"):
    key = dkim_key(pem, domain, selector)
    resolver.publish_txt(key.name, key.record)
    return key


def run(resolver, msg, *, mode="reject", client=OUTSIDE, sender="alice@example.org",
        spf_result=None, **options):
    return dmarc.check(screened(client_ip=client, sender=sender), msg, mode, resolver,
                       spf_result=spf_result, **options)


# ---------------------------------------------------------------- parts

def test_organisational_domain_comes_from_the_public_suffix_list():
    organisation = dmarc.organisational_domain
    assert organisation("mail.shop.example.test") == "example.test"     # unknown TLD: *
    assert organisation("other.test") == "other.test"
    assert organisation("News.Example.CO.UK.") == "example.co.uk"
    assert organisation("alice.github.io") == "alice.github.io"         # private section
    assert organisation("com") == "com"


def test_alignment_relaxed_and_strict():
    assert dmarc.aligned("bounce.example.org", "example.org", "r")
    assert dmarc.aligned("a.example.test", "b.example.test", "r")
    assert not dmarc.aligned("a.example.test", "a.other.test", "r")
    assert not dmarc.aligned("bounce.example.org", "example.org", "s")
    assert dmarc.aligned("Example.org.", "example.org", "s")
    assert not dmarc.aligned("", "example.org", "r")


def test_record_parsing():
    record = dmarc.parse_record("example.org", "v=DMARC1; p=Quarantine; sp=reject; "
                                               "adkim=s; aspf=s; pct=20")
    assert record == dmarc.Policy("example.org", "quarantine", "reject", "s", "s", 20)
    assert dmarc.parse_record("example.org", "v=DMARC1; rua=mailto:x@example.org").p == "none"
    assert dmarc.parse_record("example.org", "v=DMARC1; p=bogus") is None
    lenient = dmarc.parse_record("example.org", "v=DMARC1; p=reject; sp=junk; pct=900; adkim=x")
    assert (lenient.sp, lenient.pct, lenient.adkim) == (None, 100, "r")


def test_from_domains():
    assert dmarc.from_domains(message("Alice <alice@Example.ORG>")) == ["example.org"]
    assert dmarc.from_domains(message("a@one.example, b@two.example, c@one.example")) == [
        "one.example", "two.example"]
    assert dmarc.from_domains(message("a@one.example", extra="From: b@two.example\r\n")) == [
        "one.example", "two.example"]
    assert dmarc.from_domains(message("a@one.example", body="From: b@two.example\r\n")) == [
        "one.example"]                                    # a From: in the body is no field
    assert dmarc.from_domains(message("")) == []
    assert dmarc.from_domains(message("undisclosed-recipients:;")) == []
    assert dmarc.from_domains(message("root@localhost")) == []
    assert dmarc.from_domains(b"\r\nFrom: a@one.example\r\n") == []     # no header at all
    assert dmarc.from_domains(b"Subject: x\nFrom: a@one.example\n\nFrom: b@two.example\n") \
        == ["one.example"]                                # LF line ends, as we store them
    assert dmarc.from_domains(b"From: a@one.example\r\n") == ["one.example"]   # no body


# ---------------------------------------------------------------- DKIM

def test_unsigned_message_is_dkim_none(resolver):
    dkim_result, _ = run(resolver, message())
    assert dkim_result.result == "none" and dkim_result.auth == "dkim=none"


def test_a_good_signature_passes(resolver, pems):
    key = publish(resolver, pems[0], "example.org")
    dkim_result, _ = run(resolver, key.sign(message()))
    assert dkim_result.result == "pass"
    assert dkim_result.auth.startswith("dkim=pass header.d=example.org header.s=sel header.b=")


def test_a_changed_body_fails(resolver, pems):
    key = publish(resolver, pems[0], "example.org")
    signed = key.sign(message()).replace(b"this is a test", b"this is a fake")
    dkim_result, _ = run(resolver, signed)
    assert dkim_result.result == "fail" and "body hash" in dkim_result.reason


def test_a_signature_by_another_key_fails(resolver, pems):
    publish(resolver, pems[1], "example.org")                 # DNS holds the other key
    signed = dkim_key(pems[0], "example.org").sign(message())
    assert run(resolver, signed)[0].result == "fail"


def test_a_missing_key_is_permerror_and_a_dns_failure_temperror(resolver, pems):
    signed = dkim_key(pems[0], "example.org").sign(message())
    assert run(resolver, signed)[0].result == "permerror"
    resolver.failing.add("sel._domainkey.example.org")
    dkim_result, _ = run(resolver, signed)
    assert dkim_result.result == "temperror"
    assert dkim_result.auth.startswith("dkim=temperror (")


def test_rsa_sha1_signatures_are_not_valid(resolver, pems):
    key = publish(resolver, pems[0], "example.org")
    dkim_result, _ = run(resolver, key.sign(message(), algorithm=b"rsa-sha1"))
    assert dkim_result.result == "fail" and "RFC 8301" in dkim_result.reason


def test_every_signature_gets_a_clause(resolver, pems):
    good = publish(resolver, pems[0], "example.org")
    other = dkim_key(pems[1], "list.example", "s2")          # no key published
    dkim_result, _ = run(resolver, other.sign(good.sign(message())))
    clauses = dkim_result.auth.split("; ")
    assert clauses[0].startswith("dkim=permerror (no key at s2._domainkey.list.example) "
                                 "header.d=list.example header.s=s2")
    assert clauses[1].startswith("dkim=pass header.d=example.org header.s=sel")
    assert dkim_result.result == "pass"


def test_signatures_beyond_the_limit_are_not_verified(resolver, pems, monkeypatch):
    monkeypatch.setattr(dmarc, "MAX_SIGNATURES", 2)
    key = publish(resolver, pems[0], "example.org")
    signed = key.sign(key.sign(key.sign(message())))
    dkim_result, _ = run(resolver, signed)
    assert dkim_result.auth.count("dkim=pass") == 2


# ---------------------------------------------------------------- DMARC

def test_pass_by_spf_alignment(resolver):
    _, result = run(resolver, message(), client="192.0.2.25",
                    sender="bounces@bounce.example.org", spf_result="pass")
    assert result.result == "pass" and not result.refuses and not result.junk
    assert result.auth == "dmarc=pass (p=reject dis=none) header.from=example.org"
    assert "SPF bounce.example.org" in result.reason


def test_spf_is_evaluated_here_when_the_spf_check_is_off(resolver):
    _, result = run(resolver, message(), client="192.0.2.25", spf_result=None)
    assert result.result == "pass"
    assert ("example.org", "TXT") in resolver.asked


def test_pass_by_dkim_alignment(resolver, pems):
    key = publish(resolver, pems[0], "mail.example.org")     # relaxed: same organisation
    _, result = run(resolver, key.sign(message()), spf_result="fail")
    assert result.result == "pass" and "DKIM mail.example.org" in result.reason


def test_strict_alignment_wants_the_same_name(resolver, pems):
    resolver.zone.pop(("_dmarc.example.org", "TXT"))
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=reject; adkim=s; aspf=s")
    key = publish(resolver, pems[0], "mail.example.org")
    _, result = run(resolver, key.sign(message()), sender="x@bounce.example.org",
                    client="192.0.2.25", spf_result="pass")
    assert result.result == "fail" and result.refuses


def test_a_signature_by_an_unrelated_domain_does_not_align(resolver, pems):
    key = publish(resolver, pems[0], "mailer.example.net")
    dkim_result, result = run(resolver, key.sign(message()), spf_result="fail")
    assert dkim_result.result == "pass"
    assert result.result == "fail"


def test_fail_with_p_reject_refuses_in_reject_mode(resolver):
    _, result = run(resolver, message(), spf_result="fail")
    assert result.result == "fail"
    assert result.reply == DMARC_REJECTED.fill(domain="example.org")
    assert (result.reply.code, result.reply.enhanced) == (550, "5.7.1")
    assert result.auth == "dmarc=fail (p=reject dis=reject) header.from=example.org"


def test_fail_is_only_recorded_in_tag_mode(resolver):
    _, result = run(resolver, message(), mode="tag", spf_result="fail")
    assert result.result == "fail" and not result.refuses and not result.junk


def test_fail_with_p_quarantine_goes_to_junk(resolver):
    resolver.zone.pop(("_dmarc.example.org", "TXT"))
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=quarantine")
    _, result = run(resolver, message(), spf_result="fail")
    assert result.result == "fail" and result.junk and not result.refuses
    _, tagged = run(resolver, message(), mode="tag", spf_result="fail")
    assert not tagged.junk


def test_fail_with_p_none_is_only_recorded(resolver):
    resolver.zone.pop(("_dmarc.example.org", "TXT"))
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=none")
    _, result = run(resolver, message(), spf_result="fail")
    assert result.result == "fail" and not result.refuses and not result.junk


def test_a_subdomain_gets_the_organisations_sp_policy(resolver):
    resolver.zone.pop(("_dmarc.example.org", "TXT"))
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
    _, result = run(resolver, message("news@news.example.org"), spf_result="fail")
    assert result.junk and not result.refuses
    assert ("_dmarc.news.example.org", "TXT") in resolver.asked
    assert result.auth == ("dmarc=fail (p=reject sp=quarantine dis=quarantine) "
                           "header.from=news.example.org")
    _, own = run(resolver, message("alice@example.org"), spf_result="fail")
    assert own.refuses                                     # the domain itself: p=


def test_a_subdomain_with_its_own_record_uses_that(resolver):
    resolver.publish_txt("_dmarc.news.example.org", "v=DMARC1; p=none")
    _, result = run(resolver, message("news@news.example.org"), spf_result="fail")
    assert result.result == "fail" and not result.refuses


def test_a_test_tld_organisation_is_its_registered_name(resolver):
    resolver.publish_txt("_dmarc.example.test", "v=DMARC1; p=reject")
    _, result = run(resolver, message("a@mail.shop.example.test"), spf_result="fail")
    assert result.reply == DMARC_REJECTED.fill(domain="mail.shop.example.test")
    assert ("_dmarc.example.test", "TXT") in resolver.asked
    _, other = run(resolver, message("a@mail.other.test"), spf_result="fail")
    assert other.result == "none"                          # example.test's policy is not its


@pytest.mark.parametrize("draw, refused", [(0.19, True), (0.21, False)])
def test_pct_samples_the_policy(resolver, draw, refused):
    resolver.zone.pop(("_dmarc.example.org", "TXT"))
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=reject; pct=20")
    _, result = run(resolver, message(), spf_result="fail", sample=lambda: draw)
    assert result.refuses is refused
    assert result.junk is not refused                      # the next less strict policy


def test_no_record_is_none(resolver):
    _, result = run(resolver, message("x@nodmarc.example"), spf_result="fail")
    assert result.result == "none" and not result.refuses
    assert result.auth == "dmarc=none header.from=nodmarc.example"


def test_several_records_mean_none(resolver):
    resolver.publish_txt("_dmarc.example.org", "v=DMARC1; p=none")
    _, result = run(resolver, message(), spf_result="fail")
    assert result.result == "none"


def test_a_record_look_up_failure_is_temperror_and_refuses_nothing(resolver):
    resolver.failing.add("_dmarc.example.org")
    _, result = run(resolver, message(), spf_result="fail")
    assert result.result == "temperror" and not result.refuses
    assert result.auth.startswith("dmarc=temperror (")


def test_a_second_from_cannot_hide_a_forged_one(resolver):
    resolver.publish_txt("_dmarc.attacker.example", "v=DMARC1; p=none")
    msg = message("ceo@example.org", extra="From: me@attacker.example\r\n")
    _, result = run(resolver, msg, sender="me@attacker.example", spf_result="pass")
    assert result.reply == DMARC_REJECTED.fill(domain="example.org")
    assert "header.from=example.org" in result.auth
    assert "header.from=attacker.example" in result.auth


def test_the_strictest_policy_of_the_failing_authors_applies(resolver):
    resolver.publish_txt("_dmarc.quarantine.example", "v=DMARC1; p=quarantine")
    msg = message("a@example.org, b@quarantine.example")
    _, result = run(resolver, msg, spf_result="fail")
    assert result.reply == DMARC_REJECTED.fill(domain="example.org")


def test_no_from_address_is_permerror_not_a_refusal(resolver):
    _, result = run(resolver, message(""), spf_result="fail")
    assert result.result == "permerror" and not result.refuses


def test_the_whole_check_stays_within_its_budget(resolver, pems):
    key = publish(resolver, pems[0], "example.org")
    run(resolver, key.sign(message()), spf_result=None, budget=2.0)
    assert max(resolver.lifetimes) <= 2.0
