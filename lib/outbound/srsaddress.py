"""Mail to SRS addresses at [server] hostname: a bounce (or auto-reply) to a
forward we rewrote, reversed to the original sender after its hash and age
are checked, or refused (DESIGN 7.2).

Who may use one: anyone, as with postsrsd behind Postfix. Bounces come from
the null sender, but vacation replies and challenge-response systems answer
the envelope sender with a sender of their own; the HMAC and the 21-day
limit are what keep the address from being an open relay, since only an
address this server wrote in the last three weeks is reversed, and only to
the one sender it names.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..config.router import REJECTED, Resolution, Router
from ..core.addresses import Address, AddressError, parse_mailbox
from . import srs

SRS_RULE = "srs"                     # Resolution.rule of a reversed SRS address


def srs_domain(router: Router) -> str | None:
    """The domain SRS addresses live at ([server] hostname), when srs_secret is set."""
    config = router.config
    return config.server.hostname.lower() if config.relay.srs_secret else None


def resolve_bounce(router: Router, address: Address, now: float | None = None) -> Resolution | None:
    """Where mail to `address` goes when it is an address at the SRS domain:
    the original sender's resolution, or REJECTED with why. None for any other
    address (the router decides those)."""
    domain = srs_domain(router)
    if domain is None or address.domain.lower() != domain:
        return None
    text = f"{address.local}@{address.domain}"
    if not srs.is_srs(text):
        if address.domain in router.config.domains:
            return None                  # also a local domain: its own addresses as usual
        return _refused(address, f"{domain} ([server] hostname) accepts mail for SRS "
                                 "addresses only")
    secret = router.config.relay.srs_secret
    try:
        original = srs.reverse(text, secret, time.time() if now is None else now)
    except srs.SrsExpired as error:
        return _refused(address, f"expired SRS address: {error}")
    except srs.SrsForged as error:
        return _refused(address, f"forged SRS address: {error}")
    except srs.SrsError as error:
        return _refused(address, f"malformed SRS address: {error}")
    try:
        target = parse_mailbox(original, utf8=True)
    except AddressError as error:
        return _refused(address, f"malformed SRS address: {original!r}: {error}")
    resolution = router.resolve(target)
    if resolution.result == REJECTED:
        return replace(resolution, address=address)
    # The SRS address as the one given: its copy counts as forwarded (DSNs name it)
    return replace(resolution, address=address, rule=SRS_RULE,
                   reason=f"SRS address of {target}, reversed: {resolution.reason}")


def _refused(address: Address, reason: str) -> Resolution:
    return Resolution(address, REJECTED, (), (), reason + "; RCPT TO gets 550 5.1.1", SRS_RULE)
