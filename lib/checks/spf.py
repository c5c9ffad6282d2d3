"""The SPF check (RFC 7208) with pyspf: is the client allowed to send for the
MAIL FROM domain (the HELO name for the null sender)? Its DNS goes through
checks/dns.py, within a bounded time for the whole evaluation.

What follows (DESIGN 7.1): with `reject`, `fail` refuses (550 5.7.23) and
`temperror` defers (451 4.7.24), before DATA; softfail, neutral, none and
permerror never refuse. With `tag` every result is only recorded, in the
Authentication-Results clause `spf=<result> smtp.mailfrom=<domain>` (or
`smtp.helo=<name>`, RFC 8601 2.7.2).
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Any

from ..core.replies import SPF_FAILED, SPF_TEMPERROR
from .dns import LIFETIME, DnsFailure, Resolver, require
from .verdict import CheckResult, Screened

CHECK = "spf"
TIME_BUDGET = 20.0     # seconds for one whole evaluation (RFC 7208 4.6.4: at least 20 s)
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
MAX_DETAIL = 200       # characters of pyspf's explanation kept in the reason


@dataclass(frozen=True)
class Identity:
    """What SPF checks for this envelope (RFC 7208 2.3, 2.4)."""
    kind: str          # "mailfrom", or "helo" for the null sender
    domain: str        # lower case, without a trailing dot; "" when there is none

    @property
    def property(self) -> str:
        """The RFC 8601 property naming it: smtp.mailfrom or smtp.helo."""
        return f"smtp.{self.kind}"


def identity(screened: Screened) -> Identity:
    """The MAIL FROM domain, or the HELO name when the sender is null <>."""
    if screened.sender:
        return Identity("mailfrom", screened.sender.rpartition("@")[2].rstrip(".").lower())
    return Identity("helo", screened.helo.rstrip(".").lower())


def check(screened: Screened, mode: str, resolver: Resolver, *,
          budget: float = TIME_BUDGET) -> CheckResult:
    """Evaluate SPF for the envelope; `mode` is tag or reject ([checks] spf)."""
    who = identity(screened)
    client = _client(screened.client_ip)
    if not _checkable(who.domain):
        result, detail = "none", f"{who.domain or 'no domain'} cannot be checked"
    elif client is None:
        result, detail = "permerror", f"{screened.client_ip!r} is not an IP address"
    else:
        result, detail = _evaluate(client, screened, resolver, budget)
    auth = f"{CHECK}={result} {who.property}={who.domain or 'unknown'}"
    reason = f"{result} for {who.domain or 'no domain'} ({who.kind}) from {client}: {detail}"
    reply = None
    if mode == "reject" and result == "fail":
        reply = SPF_FAILED.fill(detail=f"{who.domain} does not allow {client} to send its mail")
    elif mode == "reject" and result == "temperror":
        reply = SPF_TEMPERROR.fill(detail=f"DNS of {who.domain} did not answer")
    return CheckResult(CHECK, result, reason, reply=reply, auth=auth)


def _evaluate(client: str, screened: Screened, resolver: Resolver,
              budget: float) -> tuple[str, str]:
    """(result, pyspf's explanation), with pyspf's DNS through `resolver`."""
    pyspf = _pyspf()
    _routing.resolver = resolver
    try:
        # querytime=0 would mean "no limit" to pyspf: a spent budget stays a tiny one
        query = pyspf.query(i=client, s=screened.sender, h=screened.helo,
                          querytime=max(budget, 0.001))
        result, _code, explanation = query.check()
    except Exception as error:      # pyspf on a stranger's DNS data: a verdict, not a crash
        result, explanation = "permerror", f"pyspf failed: {type(error).__name__}: {error}"
    finally:
        _routing.resolver = None
    result = str(result).lower()
    if result not in RESULTS:                  # RFC 4408 names of old pyspf releases
        result = {"error": "temperror", "unknown": "permerror"}.get(result, "permerror")
    return result, _clean(str(explanation)) or "no explanation"


# ---------------------------------------------------------------- pyspf's DNS
# pyspf asks DNS through its module function spf.DNSLookup(name, qtype, strict,
# timeout) -> [((name, qtype), value), ...]. We replace it, once, with one that
# uses the Resolver of the thread's current check (a thread-local, so that
# sessions with different resolvers never mix), and pyspf's own for anyone
# else in the process.

_routing = threading.local()
_installed_lock = threading.Lock()
_library_lookup: Any = None


def _pyspf() -> Any:
    global _library_lookup
    pyspf: Any = require("spf", "[checks] spf")
    with _installed_lock:
        if _library_lookup is None:
            _library_lookup = pyspf.DNSLookup
            pyspf.DNSLookup = _lookup
    return pyspf


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list:
    resolver: Resolver | None = getattr(_routing, "resolver", None)
    if resolver is None:
        return _library_lookup(name, qtype, strict, timeout)
    pyspf = require("spf", "[checks] spf")
    try:
        records = resolver.records(name, qtype, lifetime=min(timeout, LIFETIME))
    except DnsFailure as failure:
        raise pyspf.TempError(f"DNS {failure}") from None
    return [((name, qtype), _value(qtype, record)) for record in records]


def _value(qtype: str, record: Any) -> Any:
    """A record as pyspf's own dnspython look-up gives it."""
    if qtype in ("A", "AAAA"):
        return record.address
    if qtype == "MX":
        return record.preference, record.exchange
    if qtype == "PTR":
        return record.target.to_text(True)
    if qtype in ("TXT", "SPF"):
        return record.strings
    return record.to_text()


# ---------------------------------------------------------------- small parts

def _client(text: str) -> str | None:
    """The client address as SPF sees it: IPv4 for an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _checkable(domain: str) -> bool:
    """A name SPF can be looked up for (RFC 7208 4.3): a dotted domain name, not
    an address literal such as a HELO of [192.0.2.1]."""
    return "." in domain and not domain.startswith("[") and all(
        0 < len(label) < 64 for label in domain.split("."))


def _clean(text: str) -> str:
    """pyspf's explanation (which may quote the domain's exp= text) as one short
    printable line, for the log."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."
