"""The deliverability wiring without sockets: the From: domain that picks the
DKIM key, SRS addresses at RCPT (srsaddress), `[routes] = smarthost` in the
schema and the next-hop choice, and the SPF record that follows from it."""

from __future__ import annotations

import pytest

from lib.cli.dnsrecords import spf_text
from lib.cli.preflight import warnings
from lib.config.router import LOCAL, REJECTED, REMOTE
from lib.core.addresses import Address
from lib.core.errors import ConfigError
from lib.outbound import srs
from lib.outbound.nexthop import HopFinder
from lib.outbound.signing import from_domain
from lib.outbound.srsaddress import SRS_RULE, resolve_bounce

from ..helpers.ini import HOSTNAME, config_text

SECRET = "sixteen-chars-or-more-secret"
NOW = 1_790_000_000.0


@pytest.mark.parametrize("content, domain", [
    (b"Subject: x\nFrom: Alice <Alice@Example.ORG>\n\nbody\n", "example.org"),
    (b"From: bob@example.net (Bob)\nFrom: eve@evil.example\n\nb\n", "example.net"),
    (b"From:\n alice@example.org\n\nbody\n", "example.org"),
    (b"Subject: no from\n\nFrom: alice@example.org in the body\n", None),
    (b"From: undisclosed-recipients:;\n\n", None),
])
def test_the_from_domain_decides_the_key(content, domain):
    assert from_domain(content) == domain


def srs_router(router, **relay):
    keys = {"srs_secret": SECRET, **relay}
    return router(config_text(relay=keys, aliases="postmaster = bhayden\nroot = bhayden\n"))


def test_a_valid_srs_address_reverses_to_the_original_sender(router):
    r = srs_router(router)
    address = srs.forward("someone@remote.example", HOSTNAME, SECRET, NOW)
    local, _, domain = address.rpartition("@")
    resolution = resolve_bounce(r, Address(local, domain), NOW)
    assert resolution is not None
    assert (resolution.result, resolution.rule) == (REMOTE, SRS_RULE)
    assert [str(a) for a in resolution.forward] == ["someone@remote.example"]


def test_an_srs_address_of_a_household_sender_reaches_the_mailbox(router):
    r = srs_router(router)
    local, _, domain = srs.forward("alice@example.org", HOSTNAME, SECRET, NOW).rpartition("@")
    resolution = resolve_bounce(r, Address(local, domain), NOW)
    assert resolution is not None and resolution.result == LOCAL
    assert resolution.mailboxes == ("alice",)


@pytest.mark.parametrize("local, why", [
    ("SRS0=zzzz=AA=remote.example=someone", "forged"),
    ("SRS0=abcd", "malformed"),
    ("postmaster", "SRS addresses only"),
])
def test_bad_srs_addresses_are_rejected_with_the_reason(router, local, why):
    resolution = resolve_bounce(srs_router(router), Address(local, HOSTNAME), NOW)
    assert resolution is not None and resolution.result == REJECTED
    assert why in resolution.reason


def test_an_old_srs_address_has_expired(router):
    local, _, domain = srs.forward("a@remote.example", HOSTNAME, SECRET,
                                   NOW - 22 * 86400).rpartition("@")
    resolution = resolve_bounce(srs_router(router), Address(local, domain), NOW)
    assert resolution is not None and "expired" in resolution.reason


def test_without_a_secret_the_router_decides(router):
    r = router(config_text())
    local, _, domain = srs.forward("a@remote.example", HOSTNAME, SECRET, NOW).rpartition("@")
    assert resolve_bounce(r, Address(local, domain), NOW) is None
    assert resolve_bounce(srs_router(router), Address("bob", "remote.example"), NOW) is None


def test_a_smarthost_route_goes_through_the_smarthost_in_mx_mode(load):
    cfg = load(config_text(relay="mode = mx\nsmarthost = 127.0.0.1:2525\nsmarthost_tls = none\n",
                           extra="[routes]\noutlook.example = smarthost\n"
                                 "lan.example = 127.0.0.1:2600\n"))
    finder = HopFinder(cfg)
    assert finder.via_smarthost("outlook.example")
    assert not finder.via_smarthost("lan.example") and not finder.via_smarthost("other.example")
    (hop,) = finder.hops("outlook.example")
    assert (hop.kind, hop.port) == ("smarthost", 2525)
    (hop,) = finder.hops("lan.example")
    assert (hop.kind, hop.port) == ("route", 2600)
    record, note = spf_text(cfg)
    assert record == "v=spf1 mx ip4:127.0.0.1 -all" and note


def test_a_smarthost_route_needs_a_smarthost(load):
    with pytest.raises(ConfigError) as caught:
        load(config_text(extra="[routes]\noutlook.example = smarthost\n"))
    assert (caught.value.section, caught.value.key) == ("routes", "outlook.example")


def test_check_warns_about_forwards_without_srs_secret(load):
    forwards = "postmaster = bhayden\nroot = bhayden\nold = bhayden@gmail.example\n"
    without = [w for w in warnings(load(config_text(aliases=forwards))) if "srs_secret" in w]
    assert len(without) == 1 and "old -> bhayden@gmail.example" in without[0]
    with_secret = load(config_text(aliases=forwards, relay={"srs_secret": SECRET}))
    assert [w for w in warnings(with_secret) if "srs_secret" in w] == []
