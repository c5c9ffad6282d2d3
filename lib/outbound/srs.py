"""SRS, the Sender Rewriting Scheme (Shevek's, as libsrs2, postsrsd and srslib
write it): the envelope sender of a forwarded message, rewritten to an address
at this server so that the receiver's SPF check passes, and read back when a
bounce comes to it.

    forward("bob@example.com", "mail.example.org", secret, now)
        -> "SRS0=HHHH=TT=example.com=bob@mail.example.org"

HHHH is the first four characters of base64(HMAC-SHA1(secret, TT + domain +
local)), every part in lower case (some MTAs change an address's case, so the
hash is also compared without case); TT is the day (days since the epoch,
mod 1024) in two base32 characters. A sender that is already SRS0 (or SRS1)
at another forwarder becomes SRS1, which keeps the first forwarder and the
opaque part, so a bounce goes back along the chain one hop at a time:

    forward("SRS0=HHHH=TT=example.com=bob@fwd.example", "mail.example.org", ...)
        -> "SRS1=GGGG=fwd.example==HHHH=TT=example.com=bob@mail.example.org"

`reverse` checks the hash (forged), the form (malformed) and, for SRS0, the age
(expired: older than max_age_days, 21 by default, or from the future), and
raises the matching SrsError; the caller answers 550 5.1.1 (DESIGN 7.2).
The null sender is never rewritten: bounces must stay bounces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

HASH_LENGTH = 4                      # base64 characters kept: 24 bits
TIME_SLOTS = 1024                    # the timestamp counts days modulo this
TIME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"   # base32, 5 bits per character
MAX_AGE_DAYS = 21                    # how long a bounce may take to come back
DAY = 86400

# After the tag, "=" (also "+" or "-", which older rewriters used) separates.
_SRS0 = re.compile(r"SRS0[=+-](?P<hash>[^=]+)=(?P<stamp>[^=]+)=(?P<domain>[^=]+)=(?P<local>.+)\Z",
                   re.IGNORECASE | re.DOTALL)
_SRS1 = re.compile(r"SRS1[=+-](?P<hash>[^=]+)=(?P<host>[^=]+)=(?P<opaque>.+)\Z",
                   re.IGNORECASE | re.DOTALL)
_TAGGED = re.compile(r"SRS[01][=+-]", re.IGNORECASE)


class SrsError(ValueError):
    """An address cannot be reversed; the subclass says why."""


class SrsMalformed(SrsError):
    """Not an SRS address of ours, or a part of it is missing or invalid."""


class SrsForged(SrsError):
    """The hash does not match: this server did not write the address."""


class SrsExpired(SrsError):
    """The address is older than max_age_days (or dated in the future)."""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("an SRS secret must not be empty")
    return key


def _hash(secret: str | bytes, *parts: str) -> str:
    mac = hmac.new(_key(secret), digestmod=hashlib.sha1)
    for part in parts:
        mac.update(part.lower().encode("utf-8", "surrogateescape"))
    return base64.b64encode(mac.digest()).decode("ascii")[:HASH_LENGTH]


def _hash_matches(secret: str | bytes, given: str, *parts: str) -> bool:
    return hmac.compare_digest(given.lower().encode("utf-8", "surrogateescape"),
                               _hash(secret, *parts).lower().encode("ascii"))


def timestamp(now: float) -> str:
    day = int(now // DAY) % TIME_SLOTS
    return TIME_ALPHABET[day >> 5] + TIME_ALPHABET[day & 31]


def _age_days(stamp: str, now: float) -> int:
    """Days since `stamp`, 0..1023 (a stamp from the future wraps round to old)."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(char not in TIME_ALPHABET for char in stamp):
        raise SrsMalformed(f"{stamp!r} is not an SRS timestamp")
    then = TIME_ALPHABET.index(stamp[0]) << 5 | TIME_ALPHABET.index(stamp[1])
    return (int(now // DAY) - then) % TIME_SLOTS


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SrsMalformed(f"{address!r} is not local@domain")
    return local, domain


def is_srs(address: str) -> bool:
    """Does the local part look like SRS0/SRS1 (whoever wrote it)?"""
    return bool(_TAGGED.match(address.rpartition("@")[0]))


def forward(sender: str, srs_domain: str, secret: str | bytes, now: float) -> str:
    """The envelope sender to forward with: SRS0 (or SRS1) at `srs_domain`.
    The null sender, and a sender already at `srs_domain`, stay as they are;
    SrsMalformed for a sender that is not local@domain."""
    if not sender or sender == "<>":
        return sender
    local, domain = _split(sender)
    if domain.lower() == srs_domain.lower():
        return sender                # ours already: a bounce to it can be reversed
    first = _SRS0.match(local)
    if first:                        # SRS0 from one forwarder: SRS1 keeps that hop
        host, opaque = domain, local[4:]
    else:
        again = _SRS1.match(local)
        if again:                    # SRS1 from yet another hop: still to the first
            host, opaque = again["host"], again["opaque"]
        else:
            stamp = timestamp(now)
            return (f"SRS0={_hash(secret, stamp, domain, local)}={stamp}={domain}={local}"
                    f"@{srs_domain}")
    return f"SRS1={_hash(secret, host, opaque)}={host}={opaque}@{srs_domain}"


def reverse(address: str, secret: str | bytes, now: float,
            max_age_days: int = MAX_AGE_DAYS) -> str:
    """The address an SRS0 or SRS1 address at this server stands for: the
    original sender (SRS0), or the previous forwarder's SRS0 address (SRS1).
    SrsMalformed, SrsForged or SrsExpired when it must not be used."""
    local, _ = _split(address)
    first = _SRS0.match(local)
    if first:
        age = _age_days(first["stamp"], now)
        if not _hash_matches(secret, first["hash"], first["stamp"], first["domain"],
                             first["local"]):
            raise SrsForged(f"{address}: the hash does not match")
        if age > max_age_days:
            raise SrsExpired(f"{address}: older than {max_age_days} days")
        return f"{first['local']}@{first['domain']}"
    again = _SRS1.match(local)
    if again:
        if not _hash_matches(secret, again["hash"], again["host"], again["opaque"]):
            raise SrsForged(f"{address}: the hash does not match")
        return f"SRS0{again['opaque']}@{again['host']}"
    raise SrsMalformed(f"{address!r} is not an SRS0 or SRS1 address")
