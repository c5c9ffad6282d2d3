"""The DNS-based checks through real DNS: dnspython asking FakeDNS on loopback.
Time-outs, SERVFAIL, the TTL cache, DNSBL answers, SPF results, DKIM keys
and DMARC policies as a name server gives them."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from lib.checks import authresults, dmarc, dnsbl, spf
from lib.checks.dns import DnsFailure, forget_resolvers, resolver
from lib.checks.verdict import ERROR
from lib.config.schema import HostPort
from lib.core.replies import DMARC_REJECTED, DNSBL_LISTED, SPF_FAILED, SPF_TEMPERROR

from ..helpers.checks import dkim_key, make_key_pem, message, screened
from ..helpers.cli import ROOT, SCRIPT
from ..helpers.ini import config_text
from ..helpers.net import HOST

CLIENT, OUTSIDE = "192.0.2.25", "198.51.100.9"
SYSTEM_PYTHON = "/usr/bin/python3"      # Debian's, with python3-dnspython from .ci/run


@pytest.fixture
def lookups(dns):
    """The process-wide Resolver for the test's FakeDNS, with a cache of its own."""
    forget_resolvers()
    yield resolver((HostPort(HOST, dns.port),))
    forget_resolvers()


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    return make_key_pem(tmp_path_factory.mktemp("dkim"), bits=2048)   # a TXT of 2 strings


# ---------------------------------------------------------------- the resolver

def test_answers_no_such_name_and_no_such_record(dns, lookups):
    dns.a("host.example", "192.0.2.1")
    assert [r.address for r in lookups.records("host.example", "A")] == ["192.0.2.1"]
    assert lookups.records("host.example", "TXT") == []
    assert lookups.records("nothing.example", "A") == []


def test_servfail_and_silence_are_failures_within_the_lifetime(dns, lookups):
    dns.servfail.add("broken.example")
    dns.silent.add("dead.example")
    with pytest.raises(DnsFailure, match="SERVFAIL"):
        lookups.records("broken.example", "A")
    started = time.monotonic()
    with pytest.raises(DnsFailure, match="no answer"):
        lookups.records("dead.example", "A", lifetime=0.5)
    assert time.monotonic() - started < 1.5


def test_answers_are_cached_for_their_ttl(dns, lookups):
    dns.ttl = 1
    dns.txt("cached.example", "v=spf1 -all")
    for _ in range(3):
        assert lookups.txt("cached.example") == [b"v=spf1 -all"]
    assert dns.asked("cached.example", "TXT") == 1
    time.sleep(1.2)
    lookups.txt("cached.example")
    assert dns.asked("cached.example", "TXT") == 2


def test_one_resolver_serves_many_threads(dns, lookups):
    for n in range(20):
        dns.a(f"h{n}.example", f"192.0.2.{n}")
    wrong: list[str] = []

    def work(n):
        for _ in range(5):
            found = [r.address for r in lookups.records(f"h{n}.example", "A")]
            if found != [f"192.0.2.{n}"]:
                wrong.append(f"h{n}: {found}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []


# ---------------------------------------------------------------- DNSBL

def test_a_listed_client_is_refused_with_the_txt_reason(dns, lookups):
    name = dnsbl.query_name(CLIENT, "zen.example")
    dns.a(name, "127.0.0.2")
    dns.txt(name, "https://zen.example/query/ip/192.0.2.25")
    result = dnsbl.check(CLIENT, ["zen.example"], lookups)
    assert result.reply == DNSBL_LISTED.fill(
        ip=CLIENT, zone="zen.example", why=": https://zen.example/query/ip/192.0.2.25")


def test_an_ipv6_client_listed_by_nibbles(dns, lookups):
    dns.a(dnsbl.query_name("2001:db8::25", "v6.example"), "127.0.0.2")
    assert dnsbl.check("2001:db8::25", ["v6.example"], lookups).refuses


def test_a_public_resolver_error_code_is_no_listing(dns, lookups):
    dns.a(dnsbl.query_name(CLIENT, "zen.example"), "127.255.255.254")
    result = dnsbl.check(CLIENT, ["zen.example"], lookups)
    assert not result.refuses and result.result == ERROR
    assert "127.255.255.254" in result.reason


def test_an_unlisted_client_passes(dns, lookups):
    dns.exists("zen.example")
    result = dnsbl.check(CLIENT, ["zen.example"], lookups)
    assert result.result == dnsbl.PASS and not result.refuses


def test_a_dead_list_is_skipped_quickly_and_the_next_one_asked(dns, lookups):
    dns.silent.add(dnsbl.query_name(CLIENT, "dead.example"))
    dns.a(dnsbl.query_name(CLIENT, "alive.example"), "127.0.0.3")
    started = time.monotonic()
    result = dnsbl.check(CLIENT, ["dead.example", "alive.example"], lookups, lifetime=0.5)
    assert time.monotonic() - started < 2.0
    assert result.reply == DNSBL_LISTED.fill(ip=CLIENT, zone="alive.example", why="")
    assert "dead.example skipped" in result.reason


# ---------------------------------------------------------------- SPF

@pytest.fixture
def spf_zone(dns):
    dns.txt("example.org", "v=spf1 mx -all")
    dns.mx("example.org", (10, "mx.example.org"))
    dns.a("mx.example.org", CLIENT)
    dns.txt("soft.example", "v=spf1 include:example.org ~all")
    dns.exists("nospf.example")
    dns.silent.add("slow.example")


@pytest.mark.parametrize("sender, client, expected", [
    ("a@example.org", CLIENT, "pass"), ("a@example.org", OUTSIDE, "fail"),
    ("a@soft.example", CLIENT, "pass"), ("a@soft.example", OUTSIDE, "softfail"),
    ("a@nospf.example", OUTSIDE, "none"), ("a@slow.example", CLIENT, "temperror")])
def test_spf_results_and_what_reject_and_tag_do(spf_zone, lookups, sender, client, expected):
    envelope = screened(client_ip=client, sender=sender)
    rejecting = spf.check(envelope, "reject", lookups, budget=0.5)
    tagging = spf.check(envelope, "tag", lookups, budget=0.5)
    assert rejecting.result == tagging.result == expected
    assert not tagging.refuses
    assert tagging.auth == f"spf={expected} smtp.mailfrom={sender.partition('@')[2]}"
    if expected == "fail":
        assert rejecting.reply.code == 550 and rejecting.reply.enhanced == "5.7.23"
        assert rejecting.reply.text == SPF_FAILED.fill(
            detail=f"example.org does not allow {client} to send its mail").text
    elif expected == "temperror":
        assert (rejecting.reply.code, rejecting.reply.enhanced) == (451, "4.7.24")
        assert rejecting.reply == SPF_TEMPERROR.fill(detail="DNS of slow.example did not answer")
    else:
        assert not rejecting.refuses


# ---------------------------------------------------------------- DKIM and DMARC

@pytest.fixture
def dmarc_zone(dns, spf_zone, pem):
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
    dns.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    key = dkim_key(pem, "example.org", "s2048")
    dns.txt(key.name, key.record)
    return key


def run_dmarc(lookups, msg, *, client=OUTSIDE, sender="bounce@example.org", mode="reject",
              budget=3.0):
    envelope = screened(client_ip=client, sender=sender)
    spf_result = spf.check(envelope, "tag", lookups, budget=1.0)
    return spf_result, *dmarc.check(envelope, msg, mode, lookups, spf_result=spf_result.result,
                                    budget=budget)


def test_dmarc_passes_by_spf_alignment(dmarc_zone, lookups):
    _, dkim_result, result = run_dmarc(lookups, message(), client=CLIENT)
    assert dkim_result.result == "none"
    assert result.result == "pass" and not result.refuses


def test_dmarc_passes_by_dkim_alignment_with_a_key_split_in_two_strings(dmarc_zone, lookups):
    assert len(dmarc_zone.record) > 255
    spf_result, dkim_result, result = run_dmarc(lookups, dmarc_zone.sign(message()))
    assert spf_result.result == "fail"
    assert dkim_result.result == "pass" and result.result == "pass"


def test_dmarc_fail_under_p_reject_is_refused(dmarc_zone, lookups):
    _, _, result = run_dmarc(lookups, message())
    assert result.reply == DMARC_REJECTED.fill(domain="example.org")
    _, _, tagged = run_dmarc(lookups, message(), mode="tag")
    assert tagged.result == "fail" and not tagged.refuses


def test_a_subdomain_without_a_record_gets_sp_quarantine(dmarc_zone, lookups):
    _, _, result = run_dmarc(lookups, message("news@news.example.org"))
    assert result.junk and not result.refuses


def test_a_test_tld_organisational_domain(dmarc_zone, dns, lookups):
    _, _, result = run_dmarc(lookups, message("a@mail.shop.example.test"),
                             sender="a@mail.shop.example.test")
    assert result.reply == DMARC_REJECTED.fill(domain="mail.shop.example.test")
    assert dns.asked("_dmarc.example.test", "TXT") == 1


def test_a_silent_dmarc_name_is_temperror_within_the_budget(dmarc_zone, dns, lookups):
    dns.silent.add("_dmarc.quiet.example")
    started = time.monotonic()
    _, _, result = run_dmarc(lookups, message("a@quiet.example"), sender="a@quiet.example",
                             budget=0.8)
    assert time.monotonic() - started < 2.5
    assert result.result == "temperror" and not result.refuses


def test_forged_results_are_replaced_by_ours(dmarc_zone, lookups):
    forged = message(extra="Authentication-Results: mail.example.org; dmarc=pass\r\n"
                           "Authentication-Results: mx.other.example; spf=none\r\n")
    spf_result, dkim_result, result = run_dmarc(lookups, forged)
    cleaned = authresults.remove_ours(forged, "mail.example.org")
    final = authresults.header_field("mail.example.org", [spf_result, dkim_result, result])
    final += cleaned
    assert final.count(b"Authentication-Results: mail.example.org") == 1
    assert b"Authentication-Results: mx.other.example; spf=none" in final
    assert b"dmarc=fail (p=reject sp=quarantine dis=reject) header.from=example.org" in final


# ---------------------------------------------------------------- Debian's dnspython

def test_debians_dnspython_asks_the_configured_name_server(dns, tmp_path):
    """Debian 12's python3-dnspython (2.3, which .ci/run installs) has no
    dns.nameserver: [relay] nameservers must still reach MX look-ups, the checks
    and dns-records --check when the server runs on /usr/bin/python3 with it."""
    dns.a("host.example", "192.0.2.1")
    dns.mx("example.net", (10, "mx.example.net"))
    dns.a("mx.example.net", "192.0.2.25")
    ini = tmp_path / "server.ini"
    ini.write_text(config_text(data_dir=tmp_path / "data",
                               relay=f"mode = mx\nnameservers = {HOST}:{dns.port}"))
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from lib.checks.dns import resolver
from lib.config.schema import HostPort, load
from lib.outbound.nexthop import HopFinder
print([r.address for r in resolver((HostPort({HOST!r}, {dns.port}),)).records("host.example", "A")])
print([(hop.name, hop.addresses) for hop in HopFinder(load({str(ini)!r})).hops("example.net")])
"""
    done = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['192.0.2.1']",
                                        "[('mx.example.net', ('192.0.2.25',))]"]
    records = subprocess.run([SYSTEM_PYTHON, str(SCRIPT), "-c", str(ini), "dns-records",
                              "example.org", "--check"], capture_output=True, text=True,
                             timeout=120)
    assert "dnspython" not in records.stderr and "missing" in records.stdout
    assert dns.asked("_dmarc.example.org", "TXT") >= 1
