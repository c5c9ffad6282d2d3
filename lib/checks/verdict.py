"""What one screening check says about a message: its result, why, and what
follows from it (a refusal, headers to add, the Junk folder)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.replies import Reply

# Results every check may give besides its own (pass, fail, listed, spam, ...):
NOT_RUN = "not run"          # an earlier refusal made it unnecessary
ERROR = "error"              # the check could not be done (daemon down, timeout, DNS)


@dataclass(frozen=True)
class CheckResult:
    check: str                          # dnsbl, spf, dkim, dmarc, greylist, spamd, rspamd, clamd
    result: str                         # the check's own word: pass, fail, listed, spam, ...
    reason: str                         # for the log and `screen`: what was found, in words
    reply: Reply | None = None          # a refusal (4xx/5xx); None: this check accepts
    headers: tuple[tuple[str, str], ...] = ()   # to add to the message, e.g. X-Spam-Flag
    junk: bool = False                  # deliver to the Junk folder instead of the inbox
    auth: str | None = None             # its Authentication-Results clause, e.g. "spf=pass
                                        # smtp.mailfrom=example.org" (RFC 8601)

    @property
    def refuses(self) -> bool:
        return self.reply is not None

    @property
    def failed_to_run(self) -> bool:
        return self.result == ERROR


@dataclass(frozen=True)
class Screened:
    """The message being screened and how it came: what every check may look at."""
    client_ip: str
    helo: str
    sender: str                          # the envelope sender; "" for the null sender <>
    recipients: tuple[str, ...]
    msg_id: str                          # the queue id, for logs and scanners
    hostname: str                        # [server] hostname: our name (authserv-id, tags)
