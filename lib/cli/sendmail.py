"""The `sendmail` command. Local submission: a message handed over by a program (the `sendmail`
command, cron) made ready to send — missing Date, Message-ID and From added,
recipients taken from the header with -t — and passed to the intake.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import re
import smtplib
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config.router import REJECTED
from ..core import wire
from ..core.addresses import Address, AddressError, parse_mailbox
from ..log.events import EventLog
from ..outbound.signing import rewrite_forwards, sign_incoming
from ..session.runtime import Runtime, Services, load_runtime
from ..store.intake import Accepted, Destinations
from ..store.spool import new_id
from .common import EXIT_FAILURE, EXIT_OK, UsageError, become_mail_user, configured_log

RECIPIENT_HEADERS = ("to", "cc", "bcc")
SMTP_ENV = "MAILBOX_APPLIANCE_SMTP"        # host:port to submit to when the queue is out of reach
NO_CONFIG_SIZE_LIMIT = 64 * 1024 * 1024   # without the INI; the server applies its own limit
_HEADER_NAME = re.compile(rb"^([!-9;-~]+):")


class SubmitError(Exception):
    """The message or an address cannot be submitted; the text says why."""


@dataclass
class Prepared:
    message: bytes                  # LF line endings, header completed
    sender: str                     # the envelope sender; "" for the null sender
    recipients: list[str]           # addresses; bare names when no local domain is known

    def parsed(self) -> tuple[Address | None, list[Address]]:
        """The envelope as addresses, for handing to the intake."""
        try:
            sender = parse_mailbox(self.sender, utf8=True) if self.sender else None
            return sender, [parse_mailbox(text, utf8=True) for text in self.recipients]
        except AddressError as error:
            raise SubmitError(f"bad address: {error}") from None


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """(header lines with their continuations joined, body) of an LF message."""
    end = data.find(b"\n\n")
    if data.startswith(b"\n"):
        return [], data[1:]
    head, body = (data, b"") if end < 0 else (data[:end + 1], data[end + 2:])
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields, body


def _name(field: bytes) -> str:
    match = _HEADER_NAME.match(field)
    return match.group(1).decode("ascii").lower() if match else ""


def _addresses(fields: list[bytes], names: tuple[str, ...]) -> list[str]:
    values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields if _name(f) in names]
    return [address for _, address in email.utils.getaddresses(values) if address]


def default_sender(domain: str | None) -> str:
    """Who runs the command, at the local domain (bare when none is known)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{domain}" if domain else user


def prepare(raw: bytes, hostname: str, sender: str | None, recipients: list[str],
            from_header_recipients: bool, full_name: str | None = None,
            local_domain: str | None = None) -> Prepared:
    """Complete the header of a message read from a program; work out the envelope."""
    converter = wire.LfConverter()
    data = converter.feed(raw) + converter.flush()
    fields, body = split_message(data)
    names = {_name(field) for field in fields}
    envelope_from = sender if sender is not None else default_sender(local_domain)
    wanted = list(recipients)
    if from_header_recipients:
        wanted += _addresses(fields, RECIPIENT_HEADERS)
        fields = [f for f in fields if _name(f) != "bcc"]     # -t: Bcc is not shown
    if not wanted:
        raise SubmitError("no recipients (give addresses, or -t to read them from the header)")
    added = []
    if "from" not in names:
        author = (_qualified(envelope_from, local_domain or hostname) if envelope_from
                  else f"MAILER-DAEMON@{hostname}")                 # From needs a mailbox
        shown = email.utils.formataddr((full_name, author)) if full_name else author
        added.append(f"From: {shown}".encode())
    if "date" not in names:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}".encode())
    if "message-id" not in names:
        added.append(f"Message-ID: {email.utils.make_msgid(domain=hostname)}".encode())
    message = b"\n".join(fields + added) + b"\n\n" + body
    # cron and mail(1) address local users by name alone ("root"): as sendmail
    # does, such a name gets this server's own domain. Without one (the INI is
    # not readable), the name goes as it is and the server qualifies it.
    wanted = [_qualified(text.strip(), local_domain) for text in dict.fromkeys(wanted)]
    envelope_from = _qualified(envelope_from, local_domain) if envelope_from else ""
    for text in [envelope_from, *wanted]:
        if not text:
            continue
        try:
            parse_mailbox(text if "@" in text else f"{text}@{hostname}", utf8=True)
        except AddressError as error:
            raise SubmitError(f"bad address: {error}") from None
    return Prepared(message, envelope_from, list(dict.fromkeys(wanted)))


def _qualified(text: str, domain: str | None) -> str:
    return text if "@" in text or not domain else f"{text}@{domain}"


def submit(runtime: Runtime, services: Services, prepared: Prepared, origin: str) -> Accepted:
    """Deliver the local recipients and queue the rest, durably; raise SubmitError
    (nothing accepted) when a local recipient does not exist."""
    sender, recipients = prepared.parsed()
    resolutions = []
    for recipient in recipients:
        resolution = runtime.router.resolve(recipient)
        if resolution.result == REJECTED:
            raise SubmitError(f"{recipient}: {resolution.reason}")
        resolutions.append(resolution)
    msg_id = new_id()
    header = (f"Received: by {runtime.hostname} (mailbox_appliance sendmail, {origin}) "
              f"id {msg_id}; {email.utils.formatdate(localtime=True)}\n").encode()
    utf8 = not all(r.is_ascii for r in recipients) or (sender is not None and not sender.is_ascii)
    incoming = services.intake.begin(msg_id, sender, Destinations.of(resolutions),
                                     header, utf8=utf8, origin={"sendmail": origin})
    try:
        incoming.write(prepared.message)
        log = EventLog("sendmail").bind(msg=msg_id)
        sign_incoming(incoming, runtime.config, log)        # the household's own mail
        rewrite_forwards(incoming, runtime.config, runtime.hostname, log)
        return incoming.commit()
    except BaseException:
        incoming.discard()
        raise


# ---------------------------------------------------------------- the command

def cmd_sendmail(args) -> int:
    options = _sendmail_options(args.args)
    if not options.recipients and not options.from_header:
        raise UsageError("sendmail: no recipients (give addresses, or -t to read them "
                         "from the header)")
    uid = os.getuid()                         # who ran it, before acting as the mail user
    origin = f"uid {uid}"
    runtime = None if _unreadable(args.config) else load_runtime(args.config)
    limit = runtime.config.limits.max_message_size if runtime else NO_CONFIG_SIZE_LIMIT
    raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        print("sendmail: message larger than [limits] max_message_size", file=sys.stderr)
        return EXIT_FAILURE
    if options.dot_ends:
        raw = _cut_at_dot(raw)
    try:
        if runtime is None:
            # The INI is the server's (640 root:mail): hand the message to the
            # running server over SMTP, as nullmailer and msmtp do.
            prepared = prepare(raw, socket.getfqdn(), options.sender, options.recipients,
                               options.from_header, options.full_name, None)
            accepted = _submit_over_smtp(_smtp_targets(None), prepared,
                                         f"cannot read {args.config}")
        else:
            prepared = prepare(raw, runtime.hostname, options.sender, options.recipients,
                               options.from_header, options.full_name,
                               runtime.router.primary_domain)
            if os.geteuid() == 0 or _queue_writable(runtime):
                become_mail_user(runtime)
                with configured_log(runtime):
                    done = submit(runtime, Services.create(runtime.config), prepared, origin)
                    _log_accepted(done, prepared, uid)
                accepted = done.id
            else:
                accepted = _submit_over_smtp(_smtp_targets(runtime), prepared,
                                             "cannot write the queue")
    except SubmitError as error:
        print(f"sendmail: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if options.verbose:
        print(f"sendmail: accepted by {accepted}")
    return EXIT_OK


def _log_accepted(done: Accepted, prepared: Prepared, uid: int) -> None:
    """The line the SMTP session logs for a message it accepted, for this one."""
    EventLog("sendmail").info(
        "accepted", msg=done.id, size=len(prepared.message), origin="sendmail", uid=uid,
        sender=f"<{prepared.sender}>", to=prepared.recipients,
        mailboxes=list(done.mailboxes) or None, queue=",".join(done.queue_ids) or None)


def _unreadable(path: Path) -> bool:
    """The INI exists but this user may not read it (a missing one is an error)."""
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False                  # load_runtime says what is wrong with it


@dataclass
class SendmailOptions:
    sender: str | None = None          # -f / -r; "" for the null sender (-f "<>")
    full_name: str | None = None       # -F
    from_header: bool = False          # -t: recipients from To/Cc/Bcc
    dot_ends: bool = True              # without -i, a lone "." line ends the message
    verbose: bool = False              # -v
    recipients: list[str] = field(default_factory=list)


def _sendmail_options(args: list[str]) -> SendmailOptions:
    """The sendmail(8) options cron, mailx and scripts use; others are refused."""
    options = SendmailOptions()
    items = list(args)
    while items:
        arg = items.pop(0)
        if arg == "--":
            options.recipients += items
            break
        if not arg.startswith("-") or arg == "-":
            options.recipients.append(arg)
            continue
        flag, value = arg[:2], arg[2:]
        if flag in ("-f", "-F", "-r"):
            if not value:
                if not items:
                    raise UsageError(f"sendmail: {flag} needs a value")
                value = items.pop(0)
            if flag == "-F":
                options.full_name = value
            else:
                options.sender = value
        elif arg == "-t":
            options.from_header = True
        elif arg in ("-i", "-oi"):
            options.dot_ends = False
        elif arg == "-v":
            options.verbose = True
        elif flag in ("-o", "-B") or arg in ("-odi", "-odb", "-odq", "-em", "-n"):
            continue                          # delivery modes and encodings: nothing to do
        else:
            raise UsageError(f"sendmail: unknown option {arg}")
    if options.sender == "<>":
        options.sender = ""
    return options


def _cut_at_dot(raw: bytes) -> bytes:
    """Without -i, a line with a single '.' ends the message (sendmail tradition)."""
    for marker in (b"\n.\n", b"\n.\r\n"):
        end = raw.find(marker)
        if end >= 0:
            return raw[:end + 1]
    if raw.startswith((b".\n", b".\r\n")):
        return b""
    return raw


def _queue_writable(runtime) -> bool:
    """May this user write the queue (or create it)? os.access answers False, not
    an error, for a folder it cannot even look into."""
    data_dir = runtime.config.server.data_dir
    queue = data_dir / "queue"
    if os.access(queue, os.W_OK | os.X_OK):
        return True
    return not os.path.isdir(queue) and os.access(data_dir, os.W_OK | os.X_OK)


def _smtp_targets(runtime: Runtime | None) -> list[tuple[str, int]]:
    """Where to hand a message over SMTP: $MAILBOX_APPLIANCE_SMTP (host:port), else
    the config's first smtp listener, else port 25 on this machine."""
    given = os.environ.get(SMTP_ENV, "").strip()
    if given:
        host, _, port = given.rpartition(":")
        if not host or not port.isdigit():
            raise SubmitError(f"${SMTP_ENV} must be host:port, not {given!r}")
        return [(host.strip("[]"), int(port))]
    if runtime is not None and runtime.config.listen.smtp:
        address = runtime.config.listen.smtp[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
        return [(host, address.port)]
    return [("127.0.0.1", 25), ("::1", 25)]


def _submit_over_smtp(targets: list[tuple[str, int]], prepared: Prepared, why: str) -> str:
    """Hand the message to the running server's smtp listener on this machine,
    trying each target in turn; the first that answers decides."""
    tried = []
    for host, port in targets:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            with smtplib.SMTP(host, port, timeout=60) as client:
                client.sendmail(prepared.sender, prepared.recipients,
                                prepared.message.replace(b"\n", b"\r\n"))
            return f"the server at {where}"
        except smtplib.SMTPRecipientsRefused as error:
            refused = "; ".join(f"{address}: {code} {_text(said)}"
                                for address, (code, said) in error.recipients.items())
            raise SubmitError(f"the server at {where} refused {refused}") from None
        except smtplib.SMTPResponseException as error:
            raise SubmitError(f"the server at {where} refused the message: {error.smtp_code} "
                              f"{_text(error.smtp_error)}") from None
        except (OSError, smtplib.SMTPException) as error:
            tried.append(f"{where} ({getattr(error, 'strerror', None) or error})")
    raise SubmitError(f"{why}, and no server took the message over SMTP: tried "
                      + ", ".join(tried) + f" (set ${SMTP_ENV}=host:port for another)")


def _text(said: bytes | str) -> str:
    return said.decode("utf-8", "replace") if isinstance(said, bytes) else said
