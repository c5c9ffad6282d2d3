"""The household's outgoing message made ready before its commit: DKIM-signed
when its From: domain has a key, and the SRS sender of its forwarded copies
(DESIGN 7.2). Called by the SMTP engine for recognised senders and by
`sendmail`; never for strangers."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
import time

from ..config.schema import Config
from ..log.events import EventLog
from ..store.intake import Incoming, envelope_sender
from . import dkim, srs

HEADER_LIMIT = 256 * 1024            # a From: further down than this is not looked for
_SELECTOR = re.compile(rb"[;\s]s=([^;\s]+)")


def from_domain(content: bytes) -> str | None:
    """The domain of the (first) From: address, lower case; None when there is none."""
    head = content[:HEADER_LIMIT]
    end = head.find(b"\n\n")
    head = head[:end + 1] if end >= 0 else head
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    values = parser.parsebytes(head).get_all("From") or []
    for _, address in email.utils.getaddresses([str(value) for value in values[:1]]):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and domain:
            return domain
    return None


def sign_incoming(incoming: Incoming, config: Config, log: EventLog) -> int:
    """DKIM-sign the message as the client sent it and put the signatures on top;
    the number of signatures. A message that cannot be signed is logged
    (dkim_failed) and left unsigned: never lost. Disk errors still raise."""
    try:
        domain = from_domain(incoming.content(HEADER_LIMIT))
    except Exception as error:                 # a header the parser chokes on
        log.warning("dkim_failed", reason=f"cannot read the From: header: {error}")
        return 0
    # the whole message is read only for a domain that has a key
    if domain is None or not dkim.signer_for(config).keys(domain):
        return 0
    fields = dkim.sign(incoming.content(), domain, config, log)
    if not fields:
        return 0
    for field in fields:
        selector = _SELECTOR.search(field)
        log.info("dkim_signed", domain=domain,
                 selector=selector[1].decode("ascii", "replace") if selector else None)
    incoming.rewrite(b"".join(fields).replace(b"\r\n", b"\n"), lambda header: header)
    return len(fields)


def rewrite_forwards(incoming: Incoming, config: Config, hostname: str, log: EventLog,
                     now: float | None = None) -> None:
    """With [relay] srs_secret, the forwarded recipients' copy leaves with an SRS
    sender at `hostname` ([server] hostname), so that their SPF check passes; the recipients
    the client named keep its sender. The null sender stays null."""
    secret = config.relay.srs_secret
    if not secret or not incoming.destinations.forwarded or incoming.sender is None:
        return
    sender = envelope_sender(incoming.sender)
    try:
        rewritten = srs.forward(sender, hostname, secret,
                                time.time() if now is None else now)
    except srs.SrsError as error:
        log.warning("srs_failed", sender=sender, reason=str(error))
        return
    if rewritten != sender:
        incoming.forward_sender = rewritten
        log.info("srs_forward", sender=sender, srs=rewritten,
                 to=[address for address, _ in incoming.destinations.forwarded])
