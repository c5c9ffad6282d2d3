"""Delivery status notifications (RFC 3464): building the bounce a sender gets
when mail to some recipients failed for good or expired, and sending it.

The DSN is multipart/report; report-type=delivery-status with three parts: a
human-readable explanation, the machine-readable message/delivery-status,
and the original message's header (text/rfc822-headers). It comes from
MAILER-DAEMON@hostname with the null envelope sender, so it can never bounce
back in turn (RFC 5321 4.5.5); a message that had a null sender gets none.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from dataclasses import dataclass

from ..config.router import REJECTED
from ..core import wire
from ..core.addresses import parse_mailbox
from ..log.events import EventLog
from ..session.runtime import Runtime, Services
from ..store.intake import Destinations
from ..store.spool import Envelope, Recipient, new_id

HEADER_LIMIT = 64 * 1024          # octets of the original header quoted in the DSN
GAVE_UP = "gave up after"         # marks a recipient that expired rather than failed
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class FailedRecipient:
    recipient: Recipient
    remote_mta: str | None        # the host that answered, if one did


def status_of(reply: str, default: str) -> str:
    """The RFC 3463 status code in an SMTP reply text ("550 5.1.1 ..."), else `default`."""
    parts = reply.split(" ", 2)
    if len(parts) >= 2 and _ENHANCED.match(parts[1]):
        return parts[1]
    return default


def original_header(message: bytes) -> bytes:
    """The header section of a stored (LF) message, bounded."""
    end = message.find(b"\n\n")
    head = message[: end + 1] if end >= 0 else message
    return head[:HEADER_LIMIT]


def build_dsn(envelope: Envelope, failed: list[FailedRecipient], hostname: str,
              original_head: bytes, expired: bool = False) -> bytes:
    """The DSN as bytes with LF line endings, ready for the store or the queue."""
    boundary = f"{envelope.id}/{secrets.token_hex(8)}/{hostname}"
    subject = ("Delivery failed: message expired" if expired
               else "Undelivered Mail Returned to Sender")
    head = [f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
            f"To: <{envelope.sender}>",
            f"Subject: {subject}",
            f"Date: {email.utils.formatdate(localtime=True)}",
            f"Message-ID: {email.utils.make_msgid('dsn', domain=hostname)}",
            "Auto-Submitted: auto-replied",                # RFC 3834: do not answer this
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"']
    explanation = [f"This is the mail system at {hostname}.", "",
                   "Your message could not be delivered to "
                   + ("these recipients" if len(failed) > 1 else "this recipient")
                   + (" before the retry period ran out." if expired else "."), ""]
    explanation += [f"<{item.recipient.address}>: {_one_line(item.recipient.last_reply) or 'failed'}"
                    for item in failed]
    explanation += ["", "The header of your message is attached below."]

    status = ["Reporting-MTA: dns; " + hostname,
              f"X-Mailbox-Appliance-Queue-ID: {envelope.id}",
              "Arrival-Date: " + email.utils.formatdate(envelope.created, localtime=True)]
    for item in failed:
        recipient = item.recipient
        status.append("")
        if recipient.original:
            status.append(f"Original-Recipient: rfc822; {recipient.original}")
        status += [f"Final-Recipient: rfc822; {recipient.address}",
                   "Action: failed",
                   f"Status: {status_of(recipient.last_reply, '4.4.7' if expired else '5.0.0')}"]
        if item.remote_mta:
            status.append(f"Remote-MTA: dns; {item.remote_mta}")
        if wire.is_number(recipient.last_reply[:3]):
            status.append(f"Diagnostic-Code: smtp; {_one_line(recipient.last_reply)}")
        status.append("Last-Attempt-Date: " + email.utils.formatdate(localtime=True))

    text = "\n".join(head) + "\n\nThis is a MIME-encapsulated delivery status report.\n\n"
    text += f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n" \
            "Content-Transfer-Encoding: 8bit\n\n" + "\n".join(explanation) + "\n\n"
    text += f"--{boundary}\nContent-Type: message/delivery-status\n\n" + "\n".join(status) + "\n\n"
    text += f"--{boundary}\nContent-Type: text/rfc822-headers\nContent-Transfer-Encoding: 8bit\n\n"
    tail = f"\n--{boundary}--\n"
    header = original_head if original_head.endswith(b"\n") else original_head + b"\n"
    return text.encode("utf-8") + header + tail.encode("utf-8")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


def send_dsn(runtime: Runtime, services: Services, envelope: Envelope, failed: list[Recipient],
             message_path) -> str | None:
    """Deliver or queue a DSN about `failed` to the envelope sender; return its id."""
    log = EventLog("delivery").bind(msg=envelope.id)
    try:
        with open(message_path, "rb") as handle:
            head = original_header(handle.read(HEADER_LIMIT))
    except FileNotFoundError:
        head = b""
    expired = all(GAVE_UP in r.last_reply for r in failed)
    report = build_dsn(
        envelope, [FailedRecipient(r, _remote_mta(r.relay)) for r in failed],
        runtime.hostname, head, expired=expired)
    try:
        sender = parse_mailbox(envelope.sender, utf8=True)
    except ValueError:
        log.warning("no_bounce", to=envelope.sender, reason="the sender is not an address")
        return None
    resolution = runtime.router.resolve(sender)
    if resolution.result == REJECTED:
        log.warning("no_bounce", to=envelope.sender,
                    reason="the sender is a local address that does not exist")
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


def _remote_mta(relay: str) -> str | None:
    """The host name in "host[ip]:port", for the DSN's Remote-MTA field."""
    if not relay or relay == "none":
        return None
    return relay.split("[", 1)[0]
