"""The DNS blocklist check: the client's address looked up in each [checks]
dnsbl zone (RFC 5782), a listing refused with the list's TXT reason.

What an answer means (RFC 5782 2.1-2.3, 5):
- an A record in 127.0.0.0/8: listed; the TXT record at the same name says why;
- an A record in 127.255.255.0/24: the list's own error code, never a listing
  (Spamhaus answers them to queries through public resolvers, or with a typo
  in the zone name): a warning, and the check goes on;
- an A record outside 127.0.0.0/8: not a listing (a lapsed list's domain that
  now answers everything): a warning;
- NXDOMAIN (or no A record): not listed;
- no answer in time, SERVFAIL: that zone is skipped with a warning (fail open:
  a dead list must not stop the mail).

Addresses that no list can know are not looked up: loopback, RFC 1918,
shared (100.64/10), link-local and IPv6 unique-local addresses only reach
the server from the LAN, and asking about them leaks the LAN's layout and
wastes the lists' queries (Postfix asks anyway). The RFC 5782 5 test point
127.0.0.2 is looked up, so that `screen --client 127.0.0.2` shows whether a
list answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.replies import DNSBL_LISTED
from .dns import LIFETIME, DnsFailure, Resolver
from .verdict import ERROR, CheckResult

CHECK = "dnsbl"
LISTED = "listed"
PASS = "pass"                # looked up everywhere it could be: listed nowhere
SKIPPED = "skipped"          # an address no list can know: nothing looked up
MAX_REASON = 200             # characters of a list's TXT reason put into our reply

LISTING_RANGE = ipaddress.IPv4Network("127.0.0.0/8")
ERROR_CODES = ipaddress.IPv4Network("127.255.255.0/24")
# The meanings Spamhaus gives its error codes (other lists use few or none).
ERROR_MEANINGS = {
    "127.255.255.252": "typing error in the list's name",
    "127.255.255.254": "query through a public or open resolver refused",
    "127.255.255.255": "too many queries",
}
TEST_POINTS = frozenset({ipaddress.ip_address("127.0.0.2")})     # RFC 5782 5
UNLISTABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "::/128", "::1/128", "fc00::/7", "fe80::/10"))


@dataclass(frozen=True)
class ZoneAnswer:
    """What one list said about one address."""
    zone: str
    listed: bool
    warning: str | None = None      # the zone could not say (error code, time-out, ...)
    codes: tuple[str, ...] = ()     # the A records that made it a listing
    why: str = ""                   # the list's TXT reason, cleaned up


def query_name(address: str, zone: str) -> str:
    """The name to look up (RFC 5782 2.1, 2.4): the IPv4 octets, or the 32 IPv6
    nibbles, in reverse order, then the zone."""
    ip = _address(address)
    reversed_part = ip.reverse_pointer.rsplit(".", 2)[0]   # drop in-addr.arpa / ip6.arpa
    return f"{reversed_part}.{zone.strip('.')}"


def lookup(address: str, zone: str, resolver: Resolver, *,
           lifetime: float = LIFETIME) -> ZoneAnswer:
    """Ask one list about one address, within `lifetime` seconds per question."""
    zone = zone.strip(".").lower()
    name = query_name(address, zone)
    try:
        records = resolver.records(name, "A", lifetime=lifetime)
    except DnsFailure as failure:
        return ZoneAnswer(zone, False, f"{zone} skipped: {failure}")
    codes = [record.address for record in records]
    listing = [c for c in codes if ipaddress.IPv4Address(c) in LISTING_RANGE
               and ipaddress.IPv4Address(c) not in ERROR_CODES]
    if not listing:
        errors = [c for c in codes if ipaddress.IPv4Address(c) in ERROR_CODES]
        if errors:
            meaning = ERROR_MEANINGS.get(errors[0], "the list's error code")
            return ZoneAnswer(zone, False, f"{zone} answered {errors[0]} ({meaning}): "
                                           "not a listing")
        if codes:
            return ZoneAnswer(zone, False, f"{zone} answered {codes[0]}, outside "
                                           "127.0.0.0/8: not a listing, ignored")
        return ZoneAnswer(zone, False)
    try:
        texts = resolver.txt(name, lifetime=lifetime)
    except DnsFailure:
        texts = []                  # the listing stands; only its reason is missing
    return ZoneAnswer(zone, True, codes=tuple(listing), why=_clean(texts))


def check(client_ip: str, zones: Sequence[str], resolver: Resolver, *,
          lifetime: float = LIFETIME) -> CheckResult:
    """Look the client up in each zone in turn (at most `lifetime` seconds per
    question: two per list that lists it, one per other list); the first listing
    refuses. Warnings from the other lists go into the reason."""
    try:
        ip = _address(client_ip)
    except ValueError:
        return CheckResult(CHECK, ERROR, f"{client_ip!r} is not an IP address")
    if _unlistable(ip):
        return CheckResult(CHECK, SKIPPED, f"{ip} is a local or private address: no list "
                                           "is asked about it")
    warnings: list[str] = []
    for zone in zones:
        answer = lookup(str(ip), zone, resolver, lifetime=lifetime)
        if answer.warning:
            warnings.append(answer.warning)
        if answer.listed:
            why = f": {answer.why}" if answer.why else ""
            reason = f"{ip} listed in {answer.zone} ({', '.join(answer.codes)}){why}"
            return CheckResult(CHECK, LISTED, "; ".join([reason, *warnings]),
                               reply=DNSBL_LISTED.fill(ip=ip, zone=answer.zone, why=why))
    asked = ", ".join(z.strip(".").lower() for z in zones)
    if warnings:
        return CheckResult(CHECK, ERROR, f"{ip} not listed by the lists that answered "
                                         f"({asked}); " + "; ".join(warnings))
    return CheckResult(CHECK, PASS, f"{ip} not listed in {asked}")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address; an IPv4 address mapped into IPv6 (a [::] listener) is IPv4."""
    ip = ipaddress.ip_address(text.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _unlistable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip in TEST_POINTS:
        return False
    return any(ip in network for network in UNLISTABLE)     # False across IP versions


def _clean(texts: list[bytes]) -> str:
    """The lists' TXT reasons as one short line of printable ASCII: it goes into
    our reply, and a reply line must not carry the list's CR, LF or bytes."""
    text = " / ".join(t.decode("ascii", "replace") for t in texts)
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."
