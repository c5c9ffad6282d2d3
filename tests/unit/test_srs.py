"""SRS: forward and reverse round trips (SRS0, and SRS1 through a chain of
forwarders), forged, malformed and expired addresses refused, the null sender
never rewritten; and check's warning about forwards without srs_secret."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lib.cli import preflight
from lib.outbound import srs

from ..helpers.ini import config_text

SECRET = "a long random secret"
HERE = "mail.example.org"
NOW = 1_800_000_000.0                  # a fixed clock: the tests do not depend on today
DAY = 86400

label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
domains = st.lists(label, min_size=2, max_size=4).map(".".join)
locals_ = st.text(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.", min_size=1,
                  max_size=30).filter(lambda local: not srs.is_srs(local + "@x"))
senders = st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains)
moments = st.floats(min_value=0, max_value=4e9)


@given(senders, moments, st.integers(min_value=0, max_value=srs.MAX_AGE_DAYS))
def test_srs0_round_trip_within_the_age_limit(sender, now, days_later):
    rewritten = srs.forward(sender, HERE, SECRET, now)
    assert rewritten.startswith("SRS0=") and rewritten.endswith(f"@{HERE}")
    assert srs.reverse(rewritten, SECRET, now + days_later * DAY) == sender


@given(senders, moments)
def test_the_hash_is_compared_without_case(sender, now):
    rewritten = srs.forward(sender, HERE, SECRET, now)
    local, _, domain = rewritten.rpartition("@")
    assert srs.reverse(f"{local.upper()}@{domain}", SECRET, now).lower() == sender.lower()


@given(senders, moments, st.integers(min_value=srs.MAX_AGE_DAYS + 1,
                                     max_value=srs.TIME_SLOTS - 1))
def test_an_address_older_than_max_age_is_expired(sender, now, days_later):
    rewritten = srs.forward(sender, HERE, SECRET, now)
    with pytest.raises(srs.SrsExpired):
        srs.reverse(rewritten, SECRET, now + days_later * DAY)


@given(senders, moments, st.text(min_size=1, max_size=20).filter(lambda s: s != SECRET))
def test_another_secret_makes_it_forged(sender, now, other):
    rewritten = srs.forward(sender, HERE, SECRET, now)
    with pytest.raises(srs.SrsForged):
        srs.reverse(rewritten, other, now)


@given(senders, moments, st.data())
def test_a_changed_original_or_hash_is_forged(sender, now, data):
    tag, hash_, stamp, domain, local = srs.forward(sender, HERE, SECRET, now) \
        .rpartition("@")[0].split("=", 4)
    field = data.draw(st.sampled_from(["hash", "domain", "local"]))
    if field == "hash":
        hash_ = data.draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", min_size=4,
                                  max_size=4).filter(lambda h: h.lower() != hash_.lower()))
    elif field == "domain":
        domain = "x" + domain
    else:
        local = local + "x"
    with pytest.raises(srs.SrsForged):
        srs.reverse(f"{tag}={hash_}={stamp}={domain}={local}@{HERE}", SECRET, now)


@given(senders, moments, st.lists(domains.filter(lambda d: d != HERE), min_size=1,
                                  max_size=3, unique=True))
def test_a_chain_of_forwarders_goes_back_one_hop_at_a_time(sender, now, hops):
    """Each forwarder rewrites what the one before it sent (SRS0 at the first,
    SRS1 after it); a bounce to the last one goes straight back to the first
    forwarder's SRS0 address, which gives the original sender."""
    assume(sender.rpartition("@")[2] not in hops)
    forwarders = [*hops, HERE]
    addresses = [sender]
    for hop in forwarders:
        addresses.append(srs.forward(addresses[-1], hop, f"secret of {hop}", now))
    assert addresses[1].startswith("SRS0=") and addresses[-1].startswith("SRS1=")
    assert srs.reverse(addresses[-1], f"secret of {HERE}", now) == addresses[1]
    with pytest.raises(srs.SrsForged):
        srs.reverse(addresses[-1], SECRET, now)
    assert srs.reverse(addresses[1], f"secret of {hops[0]}", now + DAY) == sender


def test_the_null_sender_and_senders_here_are_never_rewritten():
    assert srs.forward("", HERE, SECRET, NOW) == ""
    assert srs.forward("<>", HERE, SECRET, NOW) == "<>"
    ours = srs.forward("bob@example.com", HERE, SECRET, NOW)
    assert srs.forward(ours, HERE, SECRET, NOW) == ours


def test_the_form_is_shevek_s_scheme():
    rewritten = srs.forward("Bob@Example.com", HERE, SECRET, NOW)
    tag, hash_, stamp, rest = rewritten.split("=", 3)
    assert (tag, rest) == ("SRS0", f"Example.com=Bob@{HERE}")
    assert len(hash_) == 4 and stamp == srs.timestamp(NOW)
    assert srs.timestamp(0) == "AA" and srs.timestamp(1023 * DAY) == "77"
    assert srs.timestamp(1024 * DAY) == "AA"                       # days wrap at 1024
    assert srs.reverse(rewritten.replace("SRS0=", "SRS0+", 1), SECRET, NOW) == "Bob@Example.com"


@pytest.mark.parametrize("address", [
    "bob@example.com", "SRS0=abcd=AA=example.com@here", "SRS0=abcd=AA@here", "SRS1=abcd@here",
    "SRS0=abcd=!!=example.com=bob@here", "no-at-sign", "SRS0=abcd=AA=example.com=bob@",
])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(srs.SrsMalformed):
        srs.reverse(address, SECRET, NOW)


def test_a_date_from_the_future_counts_as_expired():
    rewritten = srs.forward("bob@example.com", HERE, SECRET, NOW + 2 * DAY)
    with pytest.raises(srs.SrsExpired):
        srs.reverse(rewritten, SECRET, NOW)


def test_every_error_is_an_srs_error():
    assert all(issubclass(error, srs.SrsError)
               for error in (srs.SrsMalformed, srs.SrsForged, srs.SrsExpired))


# ---------------------------------------------------------------- check's warning

FORWARDING = "postmaster = bhayden\nroot = bhayden\nold = bhayden@gmail.example\n"


def test_check_warns_about_forwards_without_srs_secret(load):
    warned = [w for w in preflight.warnings(load(config_text(aliases=FORWARDING)))
              if "srs_secret" in w]
    assert len(warned) == 1 and "old -> bhayden@gmail.example" in warned[0]


@pytest.mark.parametrize("text", [
    config_text(aliases=FORWARDING, relay={"srs_secret": "long and random enough"}),
    config_text(aliases=FORWARDING.replace("bhayden@gmail.example", "alice@example.net")),
], ids=["secret-set", "local-target"])
def test_no_warning_with_a_secret_or_without_outside_targets(load, text):
    assert not [w for w in preflight.warnings(load(text)) if "srs_secret" in w]
