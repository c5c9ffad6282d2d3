"""The screening of a stranger's mail (DESIGN 7.1), in the order the checks run:
the client's address at the first RCPT (DNSBL, once per session), the sender
at MAIL (SPF), each recipient at RCPT (greylisting), and the message after
DATA (DKIM and DMARC, then clamd, spamd and rspamd). The SMTP engine and the
`screen` command both go through this one class, so what `screen` prints is
what `serve` does.

Recognised senders (logged in, or in trusted_networks) are never screened:
the engine does not make a Screener for them. A check that refuses ends the
screening of that message; the checks after it are `not run`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import Config
from ..core.replies import SCANNER_TEMPFAIL, Reply
from . import authresults, clamd, dmarc, dnsbl, greylist, rspamd, spamd, spf
from .dns import MissingLibrary, Resolver, resolver
from .verdict import ERROR, NOT_RUN, CheckResult, Screened
from .workers import CheckWorkers

# What strangers may not bring along: our verdicts are added by us, not by them.
_OUR_TAGS = re.compile(rb"^x-spam-(flag|status)\s*:", re.IGNORECASE)
SPF_KEPT = 100          # SPF answers a session remembers (one per envelope sender)


@dataclass
class Outcome:
    """What the screening of one message decided."""
    results: list[CheckResult] = field(default_factory=list)
    reply: Reply | None = None                  # a refusal; None: accepted
    headers: list[tuple[str, str]] = field(default_factory=list)   # to add, in order
    subject: str | None = None                  # a new Subject: (rspamd's rewrite subject)
    junk: bool = False                          # to the Junk folder, not the inbox

    @property
    def refused(self) -> bool:
        return self.reply is not None


class Screener:
    """The screening of one session's mail from a stranger; keeps what is asked
    once per session (the DNSBL answer) and per transaction (SPF)."""

    def __init__(self, config: Config, greylisting: greylist.Greylist | None, *,
                 record: bool = True, dns: Resolver | None = None,
                 workers: CheckWorkers | None = None):
        self.config = config
        # DKIM/DMARC in a worker process when there is a pool, and DNS is the
        # configured one (a Resolver handed in, a test's, stays in this process)
        self.workers = workers if workers is not None and workers.enabled and dns is None \
            else None
        self.checks = config.checks
        self.greylisting = greylisting if self.checks.greylist else None
        self.record = record                    # False for `screen`: the store is not changed
        self._dns = dns
        self._dnsbl: CheckResult | None = None
        self.spf: CheckResult | None = None     # of the current transaction
        self._spf_done: dict[tuple[str, str], CheckResult] = {}   # (sender, helo) -> result

    @property
    def dns(self) -> Resolver:
        if self._dns is None:
            self._dns = resolver(self.config.relay.nameservers)
        return self._dns

    @property
    def active(self) -> bool:
        """Is any check configured? (A config without [checks] behaves as before.)"""
        c = self.checks
        return bool(c.dnsbl or c.spf != "off" or c.dmarc != "off" or c.greylist
                    or c.any_scanner)

    # ------------------------------------------------------------ before DATA

    def client(self, ip: str) -> CheckResult | None:
        """DNSBL, asked once per session (at the first RCPT)."""
        if not self.checks.dnsbl:
            return None
        if self._dnsbl is None:
            self._dnsbl = _guarded("dnsbl", lambda: dnsbl.check(ip, self.checks.dnsbl,
                                                                self.dns))
        return self._dnsbl

    def sender(self, screened: Screened) -> CheckResult | None:
        """SPF on MAIL FROM (the HELO name for <>), once per session and sender:
        the client's address and HELO name do not change within a session, so
        neither does the answer (a bulk sender's tenth message is not asked about
        again). A temporary error is asked about again."""
        self.spf = None
        if self.checks.spf == "off":
            return None
        self.spf = self._spf(screened, self.checks.spf)
        return self.spf

    def _spf(self, screened: Screened, mode: str) -> CheckResult:
        key = (screened.sender, screened.helo)
        found = self._spf_done.get(key)
        if found is None:
            found = _guarded("spf", lambda: spf.check(screened, mode, self.dns))
            if found.result not in ("temperror", ERROR) and len(self._spf_done) < SPF_KEPT:
                self._spf_done[key] = found
        return found

    def recipient(self, screened: Screened, recipient: str) -> CheckResult | None:
        """Greylisting of one (network, sender, recipient) triplet."""
        if self.greylisting is None:
            return None
        spf_pass = self.spf is not None and self.spf.result == "pass"
        return self.greylisting.check(screened.client_ip, screened.sender, recipient,
                                      spf_pass=spf_pass, record=self.record,
                                      delay=self.checks.greylist_delay)

    # ------------------------------------------------------------ after DATA

    def message(self, path: Path, head: bytes, screened: Screened) -> Outcome:
        """DKIM/DMARC and the scanners on the stored message; `head` is the
        message as the client sent it (for DKIM, which needs every byte)."""
        outcome = Outcome()
        c = self.checks
        if c.dmarc != "off":
            # SPF off: evaluated all the same, for DMARC's alignment only
            spf_result = (self.spf or self._spf(screened, "tag")).result
            if self.workers is not None:
                workers = self.workers
                pair = _guarded_pair(lambda: workers.dmarc(
                    screened, head, c.dmarc, self.config.relay.nameservers, spf_result))
            else:
                pair = _guarded_pair(lambda: dmarc.check(screened, head, c.dmarc, self.dns,
                                                         spf_result=spf_result))
            for result in pair:
                self._take(outcome, result)
        timeout = self.config.policy.filter_timeout
        scanners: list[tuple[str, Callable[[], CheckResult]]] = []
        if c.clamd:
            scanners.append(("clamd", lambda: clamd.scan(path, screened, c, timeout)))
        if c.spamd:
            scanners.append(("spamd", lambda: spamd.scan(path, screened, c, timeout)))
        if c.rspamd:
            scanners.append(("rspamd", lambda: rspamd.scan(path, screened, c, timeout)))
        for name, scan in scanners:
            if outcome.refused:
                outcome.results.append(CheckResult(name, NOT_RUN, "an earlier check refused"))
                continue
            result = scan()
            if result.failed_to_run and c.scanner_failure == "tempfail":
                result = CheckResult(name, ERROR, result.reason, reply=SCANNER_TEMPFAIL)
            self._take(outcome, result)
        if not outcome.refused:
            outcome.headers = self._headers(outcome, screened)
        return outcome

    def _take(self, outcome: Outcome, result: CheckResult) -> None:
        outcome.results.append(result)
        if result.reply is not None and outcome.reply is None:
            outcome.reply = result.reply
        outcome.junk = outcome.junk or result.junk
        for name, value in result.headers:
            if name == rspamd.SUBJECT:
                outcome.subject = value
            else:
                outcome.headers.append((name, value))

    def _headers(self, outcome: Outcome, screened: Screened) -> list[tuple[str, str]]:
        """Authentication-Results first (when spf or dmarc is on: RFC 8601), then
        the scanners' tags; one X-Spam-Flag/X-Spam-Status pair at most."""
        headers: list[tuple[str, str]] = []
        if self.checks.spf != "off" or self.checks.dmarc != "off":
            ran = ([self.spf] if self.spf is not None else []) + outcome.results
            value = authresults.header_value(screened.hostname, ran)
            headers.append((authresults.FIELD, value.replace("\r\n", "\n")))
        seen: set[str] = set()
        for name, value in outcome.headers:
            if name.lower() not in seen:
                seen.add(name.lower())
                headers.append((name, value))
        return headers

    # ------------------------------------------------------------ the message's own header

    @property
    def cleans_something(self) -> bool:
        """Could clean_head remove anything (is spf, dmarc or a scanner on)?"""
        c = self.checks
        return c.spf != "off" or c.dmarc != "off" or bool(c.spamd or c.rspamd)

    def clean_head(self, head: bytes, hostname: str) -> bytes:
        """The message's header without what a stranger may not claim: an
        Authentication-Results with our authserv-id, and (when a scanner runs)
        X-Spam-Flag/X-Spam-Status fields."""
        if self.checks.spf != "off" or self.checks.dmarc != "off":
            head = authresults.remove_ours(head, hostname)
        if self.checks.spamd or self.checks.rspamd:
            head = without_fields(head, _OUR_TAGS)
        return head


def _guarded(check: str, run: Callable[[], CheckResult]) -> CheckResult:
    """A check whose library is missing is an error result, not a crash: it is
    logged with the package names, and (being an error) refuses nothing."""
    try:
        return run()
    except MissingLibrary as error:
        return CheckResult(check, ERROR, str(error))


def _guarded_pair(run: Callable[[], tuple[CheckResult, CheckResult]]) -> tuple[CheckResult, ...]:
    try:
        return run()
    except MissingLibrary as error:
        return (CheckResult("dkim", ERROR, str(error)), CheckResult("dmarc", ERROR, str(error)))


def without_fields(head: bytes, pattern: re.Pattern[bytes]) -> bytes:
    """The header minus the fields whose first line matches (continuations go too)."""
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(pattern.match(line))
        if not dropping:
            kept.append(line)
    return b"".join(kept)

