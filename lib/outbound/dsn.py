"""Delivery status notifications (RFC 3464): building the bounce a sender gets
when mail to some recipients failed for good or expired, and sending it.

The DSN is multipart/report; report-type=delivery-status with three parts: a
human-readable explanation, the machine-readable message/delivery-status,
and the original message's header (text/rfc822-headers), cut to a few KB at
a field boundary (as Postfix's bounce_size_limit caps what it returns): the
sender of a forwarded message is whoever a stranger chose, so a bounce must
not carry the stranger's 50 KB back to them (backscatter). It comes from
MAILER-DAEMON@hostname with the null envelope sender, so it can never bounce
back in turn (RFC 5321 4.5.5); a message that had a null sender gets none.
Both the explanation and the Diagnostic-Code say what the remote server
answered, or in plain words why no server could be asked.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from pathlib import Path

from ..config.router import REJECTED
from ..config.schema import format_duration
from ..core.addresses import parse_mailbox
from ..log.events import EventLog
from ..session.runtime import Runtime, Services
from ..store.intake import Destinations
from ..store.spool import Envelope, Recipient, new_id
from .results import FailureKind, HostFailure, RemoteReply, Result, last_result
from .srsaddress import SRS_RULE, resolve_bounce

# Octets of the original header a DSN returns: the whole header of a normal
# message (a dozen Received lines, DKIM and ARC signatures), never a stranger's 50 KB.
HEADER_LIMIT = 8 * 1024
LINE_LIMIT = 900                  # characters of a diagnostic: a line must stay under 998
_FIELD_START = re.compile(rb"\n(?=[^ \t])")   # a line that does not continue the field before


def original_header(start: bytes, limit: int = HEADER_LIMIT) -> tuple[bytes, bool]:
    """(header, cut): the header section of a stored (LF) message as whole
    fields up to `limit` octets, and whether fields were left out. `start` is
    the message's beginning, at least limit + 1 octets of it when it is longer."""
    if start.startswith(b"\n"):
        return b"", False                          # no header at all
    end = start.find(b"\n\n")
    if end >= 0 and end < limit:
        return start[:end + 1], False
    if end < 0 and len(start) <= limit:            # a message that is all header
        return start if start.endswith(b"\n") else start + b"\n", False
    # Cut before the first field that does not fit: the last line start within
    # the limit that begins a new field (the octet after its LF is not blank).
    window = start[:limit + 1]
    boundaries = [match.end() for match in _FIELD_START.finditer(window)]
    return start[:boundaries[-1] if boundaries else 0], True


def build_dsn(envelope: Envelope, failed: list[Recipient], hostname: str,
              original_head: bytes, give_up_after: float, header_cut: bool = False) -> bytes:
    """The DSN about `failed` as bytes with LF line endings, ready for the
    store or the queue. `give_up_after` is the retry period, for expired ones;
    `header_cut` says that `original_head` is only the start of the header."""
    boundary = f"{envelope.id}/{secrets.token_hex(8)}/{hostname}"
    expired = all(r.expired for r in failed)
    subject = ("Delivery failed: message expired" if expired
               else "Undelivered Mail Returned to Sender")
    head = [f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
            f"To: <{envelope.sender}>",
            f"Subject: {subject}",
            f"Date: {email.utils.formatdate(localtime=True)}",
            f"Message-ID: {email.utils.make_msgid('dsn', domain=hostname)}",
            "Auto-Submitted: auto-replied",                # RFC 3834: do not answer this
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=delivery-status;\n"
            f'\tboundary="{boundary}"']
    gave_up = f" (gave up after {format_duration(give_up_after)})"
    explanation = [f"This is the mail system at {hostname}.", "",
                   "Your message could not be delivered to "
                   + ("these recipients" if len(failed) > 1 else "this recipient")
                   + (" before the retry period ran out." if expired else "."), ""]
    status = ["Reporting-MTA: dns; " + hostname,
              f"X-Mailbox-Appliance-Queue-ID: {envelope.id}",
              "Arrival-Date: " + email.utils.formatdate(envelope.created, localtime=True)]
    for recipient in failed:
        result = _result(recipient)
        remote_mta = _remote_mta(recipient.relay) if isinstance(result, RemoteReply) else None
        suffix = gave_up if recipient.expired else ""
        said = f"{remote_mta} answered: " if remote_mta else ""
        explanation.append(f"<{recipient.address}>: {said}{result.describe()[:LINE_LIMIT]}"
                           f"{suffix}")
        status.append("")
        if recipient.original:
            status.append(f"Original-Recipient: rfc822; {recipient.original}")
        default = "4.4.7" if recipient.expired else "5.0.0"     # RFC 3463 4.4.7: expired
        status += [f"Final-Recipient: rfc822; {recipient.address}",
                   "Action: failed",
                   f"Status: {result.enhanced or default}"]
        if remote_mta:
            status.append(f"Remote-MTA: dns; {remote_mta}")
        status.append(f"Diagnostic-Code: {result.diagnostic()[:LINE_LIMIT]}{suffix}")
        status.append("Last-Attempt-Date: " + email.utils.formatdate(localtime=True))
    if header_cut:
        explanation += ["", f"The header of your message is attached below, cut after "
                            f"{len(original_head)} octets: a bounce returns at most "
                            f"{HEADER_LIMIT} octets of it."]
    else:
        explanation += ["", "The header of your message is attached below."]

    text = "\n".join(head) + "\n\nThis is a MIME-encapsulated delivery status report.\n\n"
    text += f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n" \
            "Content-Transfer-Encoding: 8bit\n\n" + "\n".join(explanation) + "\n\n"
    text += f"--{boundary}\nContent-Type: message/delivery-status\n\n" + "\n".join(status) + "\n\n"
    text += f"--{boundary}\nContent-Type: text/rfc822-headers\nContent-Transfer-Encoding: 8bit\n\n"
    tail = f"\n--{boundary}--\n"
    header = original_head if original_head.endswith(b"\n") else original_head + b"\n"
    return text.encode("utf-8") + header + tail.encode("utf-8")


def _result(recipient: Recipient) -> Result:
    return last_result(recipient) or HostFailure(FailureKind.LOCAL, "delivery failed")


def _remote_mta(relay: str) -> str | None:
    """The host name in "host[ip]:port", for the DSN's Remote-MTA field."""
    if not relay or relay == "none":
        return None
    return relay.split("[", 1)[0]


def send_dsn(runtime: Runtime, services: Services, envelope: Envelope, failed: list[Recipient],
             message_path: Path) -> str | None:
    """Deliver or queue a DSN about `failed` to the envelope sender; return its id."""
    log = EventLog("delivery").bind(msg=envelope.id)
    try:
        with open(message_path, "rb") as handle:
            head, cut = original_header(handle.read(HEADER_LIMIT + 1))
    except FileNotFoundError:
        head, cut = b"", False
    report = build_dsn(envelope, failed, runtime.hostname, head,
                       runtime.config.relay.give_up_after, header_cut=cut)
    try:
        sender = parse_mailbox(envelope.sender, utf8=True)
    except ValueError:
        log.warning("no_bounce", to=envelope.sender, reason="the sender is not an address")
        return None
    # a forward's SRS sender: the bounce goes straight to the original sender
    resolution = resolve_bounce(runtime.router, sender) or runtime.router.resolve(sender)
    if resolution.result == REJECTED:
        log.warning("no_bounce", to=envelope.sender,
                    reason=resolution.reason if resolution.rule == SRS_RULE
                    else "the sender is a local address that does not exist")
        return None
    dsn_id = new_id()
    header = (f"Received: by {runtime.hostname} (mailbox_appliance) id {dsn_id}; "
              f"{email.utils.formatdate(localtime=True)}\n").encode()
    incoming = services.intake.begin(dsn_id, None, Destinations.of([resolution]), header,
                                     utf8=envelope.utf8, origin={"dsn_for": envelope.id})
    try:
        incoming.write(report)
        incoming.commit()
    except BaseException:
        incoming.discard()
        raise
    log.info("bounce", dsn=dsn_id, to=envelope.sender, failed=[r.address for r in failed])
    return dsn_id
