"""Delivery status notifications (RFC 3464): building the bounce a sender gets
when mail to some recipients failed for good or expired, and sending it.

The DSN is multipart/report; report-type=delivery-status with three parts: a
human-readable explanation, the machine-readable message/delivery-status,
and the original message's header (text/rfc822-headers). It comes from
MAILER-DAEMON@hostname with the null envelope sender, so it can never bounce
back in turn (RFC 5321 4.5.5); a message that had a null sender gets none.
Both the explanation and the Diagnostic-Code say what the remote server
answered, or in plain words why no server could be asked.
"""

from __future__ import annotations

import email.utils
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

HEADER_LIMIT = 64 * 1024          # octets of the original header quoted in the DSN
LINE_LIMIT = 900                  # characters of a diagnostic: a line must stay under 998


def original_header(message: bytes) -> bytes:
    """The header section of a stored (LF) message, bounded."""
    end = message.find(b"\n\n")
    head = message[: end + 1] if end >= 0 else message
    return head[:HEADER_LIMIT]


def build_dsn(envelope: Envelope, failed: list[Recipient], hostname: str,
              original_head: bytes, give_up_after: float) -> bytes:
    """The DSN about `failed` as bytes with LF line endings, ready for the
    store or the queue. `give_up_after` is the retry period, for expired ones."""
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
            head = original_header(handle.read(HEADER_LIMIT))
    except FileNotFoundError:
        head = b""
    report = build_dsn(envelope, failed, runtime.hostname, head,
                       runtime.config.relay.give_up_after)
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
