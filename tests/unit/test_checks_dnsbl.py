"""The DNS blocklist check (RFC 5782) against a stub resolver: listings, the
lists' error codes, dead lists, addresses that are not looked up."""

from __future__ import annotations

import pytest

from lib.checks import dnsbl
from lib.checks.dns import DnsFailure
from lib.checks.verdict import ERROR
from lib.core.replies import DNSBL_LISTED

from ..helpers.checks import StubResolver

CLIENT = "192.0.2.25"
NAME = "25.2.0.192.zen.example"


@pytest.fixture
def resolver():
    return StubResolver()


def test_query_names_reverse_octets_and_nibbles():
    assert dnsbl.query_name("192.0.2.25", "zen.example") == NAME
    assert dnsbl.query_name("192.0.2.25", "zen.example.") == NAME
    assert dnsbl.query_name("::ffff:192.0.2.25", "zen.example") == NAME      # v4-mapped is v4
    assert dnsbl.query_name("2001:db8:1:2::ab", "v6.example") == (
        "b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.v6.example")


def test_a_listing_refuses_with_the_list_and_its_txt_reason(resolver):
    resolver.publish_a(NAME, "127.0.0.4")
    resolver.publish_txt(NAME, "Listed: see https://lists.example/query/192.0.2.25")
    result = dnsbl.check(CLIENT, ["zen.example"], resolver)
    assert result.result == dnsbl.LISTED
    assert result.reply == DNSBL_LISTED.fill(
        ip=CLIENT, zone="zen.example", why=": Listed: see https://lists.example/query/192.0.2.25")
    assert result.reply.code == 554 and result.reply.enhanced == "5.7.1"
    assert "127.0.0.4" in result.reason
    assert result.auth is None


def test_a_listing_without_txt_still_refuses(resolver):
    resolver.publish_a(NAME, "127.0.0.2")
    result = dnsbl.check(CLIENT, ["zen.example"], resolver)
    assert result.reply == DNSBL_LISTED.fill(ip=CLIENT, zone="zen.example", why="")


def test_a_listing_whose_txt_look_up_fails_still_refuses(resolver):
    resolver.publish_a(NAME, "127.0.0.2")
    original = resolver.records

    def records(name, rdtype, *, lifetime=5.0):
        if rdtype == "TXT":
            raise DnsFailure("timed out")
        return original(name, rdtype, lifetime=lifetime)

    resolver.records = records
    assert dnsbl.check(CLIENT, ["zen.example"], resolver).refuses


def test_txt_reason_is_made_one_short_printable_line(resolver):
    resolver.publish_a(NAME, "127.0.0.2")
    resolver.publish_txt(NAME, "bad\r\n250 OK injected\x00" + "x" * 400)
    why = dnsbl.check(CLIENT, ["zen.example"], resolver).reply.text
    assert "\r" not in why and "\n" not in why and "\x00" not in why
    assert len(why) < 300 and why.endswith("...")


@pytest.mark.parametrize("code, meaning", [
    ("127.255.255.254", "public or open resolver"),
    ("127.255.255.252", "typing error"),
    ("127.255.255.255", "too many queries"),
    ("127.255.255.1", "error code"),
])
def test_the_lists_error_codes_are_warnings_not_listings(resolver, code, meaning):
    resolver.publish_a(NAME, code)
    result = dnsbl.check(CLIENT, ["zen.example"], resolver)
    assert not result.refuses
    assert result.result == ERROR
    assert code in result.reason and meaning in result.reason


def test_an_answer_outside_127_8_is_not_a_listing(resolver):
    resolver.publish_a(NAME, "198.51.100.7")           # a lapsed list's wildcard
    result = dnsbl.check(CLIENT, ["zen.example"], resolver)
    assert not result.refuses and "outside 127.0.0.0/8" in result.reason


def test_nxdomain_is_not_listed(resolver):
    result = dnsbl.check(CLIENT, ["zen.example", "other.example"], resolver)
    assert result.result == dnsbl.PASS and not result.refuses
    assert resolver.asked == [(NAME, "A"), ("25.2.0.192.other.example", "A")]


def test_a_dead_list_is_skipped_with_a_warning_and_the_next_one_still_asked(resolver):
    resolver.failing.add(NAME)
    resolver.publish_a("25.2.0.192.second.example", "127.0.0.3")
    result = dnsbl.check(CLIENT, ["zen.example", "second.example"], resolver)
    assert result.reply == DNSBL_LISTED.fill(ip=CLIENT, zone="second.example", why="")
    assert "zen.example skipped" in result.reason


def test_a_dead_list_alone_fails_open(resolver):
    resolver.failing.add(NAME)
    result = dnsbl.check(CLIENT, ["zen.example"], resolver)
    assert result.result == ERROR and not result.refuses
    assert "zen.example skipped" in result.reason


def test_each_question_gets_the_bounded_lifetime(resolver):
    dnsbl.check(CLIENT, ["zen.example", "other.example"], resolver, lifetime=0.7)
    assert resolver.lifetimes == [0.7, 0.7]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.5.4", "192.168.1.9",
                                     "100.64.0.1", "169.254.1.1", "::1", "fd00::5",
                                     "fe80::1", "::ffff:192.168.1.9"])
def test_local_and_private_addresses_are_not_looked_up(resolver, address):
    result = dnsbl.check(address, ["zen.example"], resolver)
    assert result.result == dnsbl.SKIPPED and not result.refuses
    assert resolver.asked == []


def test_the_rfc5782_test_point_is_looked_up(resolver):
    resolver.publish_a("2.0.0.127.zen.example", "127.0.0.2")
    assert dnsbl.check("127.0.0.2", ["zen.example"], resolver).refuses


def test_an_ipv6_client_is_looked_up_by_nibbles(resolver):
    name = dnsbl.query_name("2001:db8::7", "v6.example")
    resolver.publish_a(name, "127.0.0.2")
    result = dnsbl.check("2001:db8::7", ["v6.example"], resolver)
    assert result.reply == DNSBL_LISTED.fill(ip="2001:db8::7", zone="v6.example", why="")


def test_a_client_that_is_no_address_is_an_error(resolver):
    result = dnsbl.check("not-an-ip", ["zen.example"], resolver)
    assert result.result == ERROR and not result.refuses and resolver.asked == []
