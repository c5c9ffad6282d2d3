"""The SPF check (pyspf, its DNS through a stub resolver): each result with
`reject` and with `tag`, the HELO identity for the null sender, and pyspf's
DNS kept apart per thread."""

from __future__ import annotations

import threading
import time

import pytest

from lib.checks import spf
from lib.core.replies import SPF_FAILED, SPF_TEMPERROR

from ..helpers.checks import StubResolver, screened

INSIDE, OUTSIDE = "192.0.2.25", "198.51.100.9"


@pytest.fixture
def resolver():
    stub = StubResolver()
    stub.publish_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    stub.publish_txt("soft.example", "v=spf1 ip4:192.0.2.0/24 ~all")
    stub.publish_txt("neutral.example", "v=spf1 ?all")
    stub.publish_txt("broken.example", "v=spf1 ip4:192.0.2.0/24 bogus:x -all")
    stub.publish_txt("mx.example.org", "v=spf1 a -all")
    stub.publish_a("mx.example.org", INSIDE)
    return stub


def run(resolver, mode="reject", client=INSIDE, sender="alice@example.org",
        helo="mx.example.org", **options):
    return spf.check(screened(client_ip=client, sender=sender, helo=helo), mode, resolver,
                     **options)


def test_identity_is_the_mail_from_domain_or_the_helo_name_for_the_null_sender():
    assert spf.identity(screened(sender="Alice@Example.ORG")) == spf.Identity(
        "mailfrom", "example.org")
    assert spf.identity(screened(sender="", helo="MX.Example.org.")) == spf.Identity(
        "helo", "mx.example.org")


def test_pass_is_recorded(resolver):
    result = run(resolver)
    assert result.result == "pass" and not result.refuses
    assert result.auth == "spf=pass smtp.mailfrom=example.org"


def test_fail_refuses_with_reject(resolver):
    result = run(resolver, client=OUTSIDE)
    assert result.result == "fail"
    assert result.reply == SPF_FAILED.fill(
        detail=f"example.org does not allow {OUTSIDE} to send its mail")
    assert (result.reply.code, result.reply.enhanced) == (550, "5.7.23")
    assert result.auth == "spf=fail smtp.mailfrom=example.org"


def test_fail_is_only_recorded_with_tag(resolver):
    result = run(resolver, mode="tag", client=OUTSIDE)
    assert result.result == "fail" and not result.refuses
    assert result.auth == "spf=fail smtp.mailfrom=example.org"


@pytest.mark.parametrize("domain, expected", [("soft.example", "softfail"),
                                              ("neutral.example", "neutral"),
                                              ("nospf.example", "none"),
                                              ("broken.example", "permerror")])
def test_softfail_neutral_none_permerror_never_refuse(resolver, domain, expected):
    for mode in ("reject", "tag"):
        result = run(resolver, mode=mode, client=OUTSIDE, sender=f"bob@{domain}")
        assert result.result == expected and not result.refuses
        assert result.auth == f"spf={expected} smtp.mailfrom={domain}"


def test_temperror_defers_with_reject_and_is_recorded_with_tag(resolver):
    resolver.failing.add("example.org")
    result = run(resolver)
    assert result.result == "temperror"
    assert result.reply == SPF_TEMPERROR.fill(detail="DNS of example.org did not answer")
    assert (result.reply.code, result.reply.enhanced) == (451, "4.7.24")
    tagged = run(resolver, mode="tag")
    assert tagged.result == "temperror" and not tagged.refuses
    assert tagged.auth == "spf=temperror smtp.mailfrom=example.org"


def test_null_sender_is_checked_by_helo_name(resolver):
    result = run(resolver, sender="", helo="mx.example.org")
    assert result.result == "pass"
    assert result.auth == "spf=pass smtp.helo=mx.example.org"
    assert run(resolver, sender="", helo="mx.example.org", client=OUTSIDE).refuses


def test_an_address_literal_helo_is_none_without_dns(resolver):
    result = run(resolver, sender="", helo="[192.0.2.25]")
    assert result.result == "none" and not result.refuses
    assert resolver.asked == []


def test_a_v4_mapped_client_is_checked_as_ipv4(resolver):
    assert run(resolver, client=f"::ffff:{INSIDE}").result == "pass"


def test_every_question_is_bounded_by_the_budget(resolver):
    run(resolver, budget=3.0)
    assert resolver.lifetimes and max(resolver.lifetimes) <= 3.0


class SlowResolver(StubResolver):
    """Answers after a short pause, so that two threads' checks overlap."""

    def records(self, name, rdtype, *, lifetime=5.0):
        time.sleep(0.005)
        return super().records(name, rdtype, lifetime=lifetime)


def test_pyspf_dns_follows_each_threads_own_resolver(monkeypatch):
    """Two checks at once with resolvers that disagree: each sees its own DNS."""
    spf._pyspf()                                     # pyspf's own look-up: never used here
    monkeypatch.setattr(spf, "_library_lookup", lambda *args: pytest.fail(
        f"pyspf asked DNS outside the check's resolver: {args}"))
    allowing, refusing = SlowResolver(), SlowResolver()
    for resolver in (allowing, refusing):                # two questions a check, a pause each
        resolver.publish_txt("example.org", "v=spf1 include:inc.example -all")
    allowing.publish_txt("inc.example", f"v=spf1 ip4:{INSIDE} -all")
    refusing.publish_txt("inc.example", "v=spf1 -all")
    results: dict[str, list[str]] = {"allowing": [], "refusing": []}
    start = threading.Barrier(2)

    def work(name, resolver):
        start.wait()
        for _ in range(15):
            results[name].append(run(resolver, mode="tag").result)

    threads = [threading.Thread(target=work, args=("allowing", allowing)),
               threading.Thread(target=work, args=("refusing", refusing))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"allowing": ["pass"] * 15, "refusing": ["fail"] * 15}
