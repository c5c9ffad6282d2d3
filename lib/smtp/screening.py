"""The SMTP engine's side of screening strangers (DESIGN 7.1): when in the
dialogue each check runs, the log line each one leaves, and how a verdict
changes the message before it is committed.

SPF runs at MAIL, the DNSBL at the first RCPT (once per session), greylisting
at each RCPT of a recipient that exists, DKIM/DMARC and the scanners after
DATA, before the 250. Clients that logged in or are in trusted_networks are
never screened (one `checks=skipped` line per message says why). The checks
themselves live in `checks/`; this module does no I/O of its own beyond theirs.
"""

from __future__ import annotations

import re

from ..checks.screening import Outcome, Screener, without_fields
from ..checks.verdict import CheckResult, Screened
from ..core.errors import Reject
from ..log.events import EventLog
from ..store.intake import envelope_sender
from .transaction import Transaction

_SUBJECT = re.compile(rb"^subject\s*:", re.IGNORECASE)


class StrangerScreening:
    """One SMTP session's screening; asked by the engine at MAIL, RCPT and after DATA."""

    def __init__(self, session) -> None:
        self.session = session
        self.screener = Screener(session.config, session.services.greylist,
                                 workers=session.services.check_workers)
        self.log: EventLog = session.log

    @property
    def applies(self) -> bool:
        """A stranger's mail, with at least one check configured."""
        session = self.session
        return session.user is None and not session.trusted and self.screener.active

    def _screened(self, transaction: Transaction) -> Screened:
        session = self.session
        return Screened(client_ip=session.client.ip, helo=session.helo or "",
                        sender=envelope_sender(transaction.sender),
                        recipients=tuple(str(a) for a, _ in transaction.recipients),
                        msg_id=transaction.id, hostname=session.host)

    def _judge(self, result: CheckResult | None, transaction: Transaction, stage: str) -> None:
        """Log one check's result; raise Reject when it refuses."""
        if result is None:
            return
        level = "warning" if result.failed_to_run else "info"
        getattr(self.log, level)("check", msg=transaction.id, check=result.check,
                                 result=result.result, reason=result.reason)
        if result.reply is not None:
            self.log.info(f"{stage}_refused", msg=transaction.id, check=result.check,
                          reply=result.reply.code, reason=result.reason)
            raise Reject(result.reply)

    # ------------------------------------------------------------ the dialogue

    def at_mail(self, transaction: Transaction) -> None:
        if not self.applies:
            return
        self._judge(self.screener.sender(self._screened(transaction)), transaction, "mail")

    def at_rcpt_client(self, transaction: Transaction) -> None:
        """Before the recipient is looked at: a listed client learns nothing of it."""
        if self.applies:
            self._judge(self.screener.client(self.session.client.ip), transaction, "rcpt")

    def at_rcpt(self, transaction: Transaction, recipient: str) -> None:
        if self.applies and self.screener.greylisting is not None:   # the only check here
            self._judge(self.screener.recipient(self._screened(transaction), recipient),
                        transaction, "rcpt")

    def after_data(self, transaction: Transaction) -> Outcome | None:
        """The message checks; the verdict is logged and, when the message is
        accepted, written into it (Authentication-Results, spam tags, a new
        Subject). Returns None when the message is not screened."""
        session = self.session
        if not self.applies:
            why = (f"logged in as {session.user}" if session.user is not None
                   else "client in trusted_networks" if session.trusted else None)
            if why is not None:
                self.log.info("checks", msg=transaction.id, checks="skipped", reason=why)
            return None
        message = transaction.message
        checks = self.screener.checks
        content = message.content() if checks.dmarc != "off" else b""
        path = message.readable_path() if checks.any_scanner else message.path
        outcome = self.screener.message(path, content, self._screened(transaction))
        for result in outcome.results:
            level = "warning" if result.failed_to_run else "info"
            getattr(self.log, level)("check", msg=transaction.id, check=result.check,
                                     result=result.result, reason=result.reason)
        if outcome.refused:
            return outcome
        added = b"".join(f"{name}: {value}\n".encode("utf-8", "surrogateescape")
                         for name, value in outcome.headers)
        if outcome.subject is not None:
            added += f"Subject: {outcome.subject}\n".encode("utf-8", "surrogateescape")

        def header(own: bytes) -> bytes:
            cleaned = self.screener.clean_head(own, session.host)
            return without_fields(cleaned, _SUBJECT) if outcome.subject is not None else cleaned

        if added or self.screener.cleans_something:
            message.rewrite(added, header)
        return outcome

