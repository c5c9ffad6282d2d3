"""The DKIM and DMARC checks, after DATA: every DKIM signature verified with
dkimpy (RFC 6376), the From: domain's DMARC policy found (RFC 7489 6.6.3),
SPF and DKIM alignment computed with the organisational domain taken from the
current public suffix list (the publicsuffixlist package), and the policy
applied (DESIGN 7.1).

With `reject`: a DMARC fail under a `reject` policy (`sp=` for a subdomain,
after `pct=` sampling) refuses with 550 5.7.1; under `quarantine` the message
goes to the Junk folder. With `tag`: only recorded. A DMARC record that DNS
cannot give now (temperror) refuses nothing.

The From: field (RFC 7489 6.6.1): every address of every From: field counts.
A message with several From: fields or addresses is checked once per author
domain and the strictest policy among those that fail applies, so that a
second From: of the sender's own cannot hide a forged one. A message with no
From: address at all gets dmarc=permerror and is not refused here (RFC 5322
requires one From:, but DESIGN 7.1 refuses only on a domain's policy).
"""

from __future__ import annotations

import functools
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from ..core.replies import DMARC_REJECTED
from . import dkimfast, spf
from .dns import LIFETIME, DnsFailure, Resolver, require
from .verdict import CheckResult, Screened

TIME_BUDGET = 20.0        # seconds for every DNS question of DKIM and DMARC together
MAX_SIGNATURES = 5        # DKIM signatures verified per message; the rest are ignored
MIN_KEY_BITS = 1024       # RFC 8301 3.2: smaller RSA keys are not valid
STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}


# ---------------------------------------------------------------- the checks

def check(screened: Screened, message: bytes, mode: str, resolver: Resolver, *,
          spf_result: str | None, budget: float = TIME_BUDGET,
          sample: Callable[[], float] = random.random) -> tuple[CheckResult, CheckResult]:
    """(the dkim result, the dmarc result) for a message; `mode` is tag or reject
    ([checks] dmarc). `spf_result` is the SPF check's result word, or None when
    SPF is off: then SPF is evaluated here, only for alignment. `sample` draws
    in [0, 1) for pct= (RFC 7489 6.6.4)."""
    deadline = time.monotonic() + budget
    signatures = verify_signatures(message, resolver, deadline)
    dkim_result = _dkim_result(signatures)
    if spf_result is None:
        spf_result = spf.check(screened, "tag", resolver, budget=_left(deadline)).result
    spf_domain = spf.identity(screened).domain
    authors = from_domains(message)
    if not authors:
        return dkim_result, CheckResult(
            "dmarc", "permerror", "no From: address with a domain to check",
            auth="dmarc=permerror (no From: address)")
    evaluations = [evaluate(author, spf_result, spf_domain, signatures, resolver, deadline,
                            sample) for author in authors]
    return dkim_result, _dmarc_result(evaluations, mode)


@dataclass(frozen=True)
class Signature:
    """One DKIM signature's verdict (RFC 8601 2.7.1 words)."""
    result: str               # pass, fail, neutral, temperror, permerror
    domain: str               # d=, lower case ("" when unreadable)
    selector: str             # s=
    b: str                    # the first 8 characters of b= (header.b, RFC 6008)
    detail: str

    @property
    def auth(self) -> str:
        clause = f"dkim={self.result}"
        if self.detail and self.result != "pass":
            clause += f" ({_comment(self.detail)})"
        if self.domain:
            clause += f" header.d={self.domain} header.s={self.selector}"
        return clause + (f" header.b={self.b}" if self.b else "")


@dataclass(frozen=True)
class Evaluation:
    """DMARC for one author domain."""
    domain: str               # the From: domain
    result: str               # pass, fail, none, temperror
    policy: Policy | None
    disposition: str          # what applies: none, quarantine, reject
    detail: str

    @property
    def auth(self) -> str:
        comment = ""
        if self.policy is not None:
            sp = f" sp={self.policy.sp}" if self.policy.sp else ""
            comment = f" (p={self.policy.p}{sp} dis={self.disposition})"
        elif self.result == "temperror":
            comment = f" ({_comment(self.detail)})"
        return f"dmarc={self.result}{comment} header.from={self.domain}"


# ---------------------------------------------------------------- DKIM (RFC 6376)

def verify_signatures(message: bytes, resolver: Resolver, deadline: float) -> list[Signature]:
    """Every DKIM-Signature (the first MAX_SIGNATURES), verified, keys from DNS."""
    dkim = dkimfast.dkimpy()
    try:
        verifier = dkim.DKIM(message, minkey=MIN_KEY_BITS, timeout=LIFETIME)
    except Exception as error:            # dkimpy parsing a stranger's message
        return [Signature("permerror", "", "", "", f"message not parsable: {error}")]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [_verify(dkim, verifier, index, resolver, deadline)
            for index in range(min(count, MAX_SIGNATURES))]


def _verify(dkim: Any, verifier: Any, index: int, resolver: Resolver,
            deadline: float) -> Signature:
    key: dict[str, Any] = {}             # what the key look-up found, for the verdict

    def get_txt(name: bytes, timeout: float = LIFETIME) -> bytes | None:
        key["name"] = name.decode("ascii", "replace").rstrip(".")
        try:
            records = resolver.txt(key["name"], lifetime=min(timeout, _left(deadline)))
        except DnsFailure as failure:
            key["failure"] = str(failure)
            raise dkim.DnsTimeoutError(str(failure)) from None
        key["text"] = records[0] if records else None
        return key["text"]

    verifier.domain = verifier.selector = None
    verifier.signature_fields = {}
    try:
        valid = verifier.verify(idx=index, dnsfunc=get_txt)
        result, detail = ("pass", "") if valid else _why_invalid(dkim, key)
    except dkim.ValidationError as error:
        result, detail = "fail", str(error)
    except dkim.DKIMException as error:
        result, detail = "permerror", str(error)
    except Exception as error:            # dkimpy on hostile input: a verdict, not a crash
        result, detail = "permerror", f"{type(error).__name__}: {error}"
    fields = verifier.signature_fields or {}
    if result == "pass" and fields.get(b"a", b"").lower() == b"rsa-sha1":
        result, detail = "fail", "rsa-sha1 signatures are not valid (RFC 8301 3.1)"
    b_tag = re.sub(rb"\s+", b"", fields.get(b"b", b""))[:8].decode("ascii", "replace")
    return Signature(result, _text(verifier.domain).lower(), _text(verifier.selector), b_tag,
                     _clean(detail))


def _why_invalid(dkim: Any, key: dict[str, Any]) -> tuple[str, str]:
    if "failure" in key:
        return "temperror", f"key look-up failed: {key['failure']}"
    if "name" not in key:
        return "permerror", "signature not usable"
    if not key.get("text"):
        return "permerror", f"no key at {key['name']}"
    try:
        dkim.evaluate_pk(key["name"], key["text"])
    except Exception as error:            # KeyFormatError, or a base64 error
        return "permerror", f"unusable key at {key['name']}: {error}"
    return "fail", "signature does not verify"


def _dkim_result(signatures: list[Signature]) -> CheckResult:
    if not signatures:
        return CheckResult("dkim", "none", "no DKIM signature", auth="dkim=none")
    best = next((s for s in signatures if s.result == "pass"), signatures[0])
    reason = "; ".join(f"{s.result} d={s.domain or '?'} s={s.selector or '?'}"
                       + (f": {s.detail}" if s.detail else "") for s in signatures)
    return CheckResult("dkim", best.result, reason,
                       auth="; ".join(s.auth for s in signatures))


# ---------------------------------------------------------------- DMARC (RFC 7489)

@dataclass(frozen=True)
class Policy:
    """A DMARC record (RFC 7489 6.3), its values checked."""
    domain: str               # where it was found: the From: domain or its organisation's
    p: str                    # none, quarantine, reject
    sp: str | None            # for subdomains of `domain`
    adkim: str                # r (relaxed) or s (strict)
    aspf: str
    pct: int                  # 0-100


def evaluate(author: str, spf_result: str, spf_domain: str, signatures: list[Signature],
             resolver: Resolver, deadline: float,
             sample: Callable[[], float] = random.random) -> Evaluation:
    """DMARC for one From: domain: its policy, alignment, what applies."""
    try:
        policy = find_policy(author, resolver, deadline)
    except DnsFailure as failure:
        return Evaluation(author, "temperror", None, "none", str(failure))
    if policy is None:
        return Evaluation(author, "none", None, "none", f"no DMARC record for {author}")
    spf_aligned = spf_result == "pass" and aligned(spf_domain, author, policy.aspf)
    dkim_aligned = [s.domain for s in signatures
                    if s.result == "pass" and aligned(s.domain, author, policy.adkim)]
    if spf_aligned or dkim_aligned:
        how = (["SPF " + spf_domain] if spf_aligned else []) + [f"DKIM {d}" for d in dkim_aligned]
        return Evaluation(author, "pass", policy, "none", "aligned: " + ", ".join(how))
    requested = policy.sp if policy.sp and author != policy.domain else policy.p
    disposition = requested
    if policy.pct < 100 and sample() * 100 >= policy.pct:     # RFC 7489 6.6.4
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(requested, "none")
    return Evaluation(author, "fail", policy, disposition,
                      f"neither SPF ({spf_result} for {spf_domain or 'no domain'}) nor any "
                      f"DKIM signature is aligned with {author}")


def find_policy(author: str, resolver: Resolver, deadline: float) -> Policy | None:
    """The DMARC record at _dmarc.<author>, else at _dmarc.<its organisational
    domain> (RFC 7489 6.6.3); None when there is none (or several)."""
    policy = _policy_at(author, resolver, deadline)
    if policy is None:
        organisation = organisational_domain(author)
        if organisation != author:
            policy = _policy_at(organisation, resolver, deadline)
    return policy


def _policy_at(domain: str, resolver: Resolver, deadline: float) -> Policy | None:
    texts = resolver.txt(f"_dmarc.{domain}", lifetime=min(LIFETIME, _left(deadline)))
    records = [t for t in texts if re.match(rb"v\s*=\s*DMARC1\s*(;|$)", t, re.IGNORECASE)]
    if len(records) != 1:
        return None                      # none, or several: DMARC does not apply (6.6.3)
    return parse_record(domain, records[0].decode("ascii", "replace"))


def parse_record(domain: str, text: str) -> Policy | None:
    """A DMARC record's tags; None when it is not usable (no valid p= and no rua=)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in STRICTNESS:
        if "rua" not in tags:            # 6.6.3 step 6
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    pct = tags.get("pct", "100")
    return Policy(domain=domain, p=p, sp=sp if sp in STRICTNESS else None,
                  adkim="s" if tags.get("adkim", "").lower() == "s" else "r",
                  aspf="s" if tags.get("aspf", "").lower() == "s" else "r",
                  pct=int(pct) if pct.isdigit() and int(pct) <= 100 else 100)


def aligned(domain: str, author: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): the same name (strict, s), or the
    same organisational domain (relaxed, r)."""
    domain, author = domain.lower().rstrip("."), author.lower().rstrip(".")
    if not domain or not author:
        return False
    if mode == "s":
        return domain == author
    return organisational_domain(domain) == organisational_domain(author)


def _dmarc_result(evaluations: list[Evaluation], mode: str) -> CheckResult:
    failing = [e for e in evaluations if e.result == "fail"]
    auth = "; ".join(e.auth for e in evaluations)
    reason = "; ".join(f"{e.domain}: {e.result}, {e.detail}"
                       + (f", policy {e.disposition}" if e.result == "fail" else "")
                       for e in evaluations)
    if failing:
        worst = max(failing, key=lambda e: STRICTNESS[e.disposition])
        reply = None
        junk = False
        if mode == "reject" and worst.disposition == "reject":
            reply = DMARC_REJECTED.fill(domain=worst.domain)
        elif mode == "reject" and worst.disposition == "quarantine":
            junk = True
        return CheckResult("dmarc", "fail", reason, reply=reply, junk=junk, auth=auth)
    results = {e.result for e in evaluations}
    overall = next(r for r in ("temperror", "none", "pass") if r in results)
    return CheckResult("dmarc", overall, reason, auth=auth)


# ---------------------------------------------------------------- From: and names

def from_domains(message: bytes) -> list[str]:
    """The domains of every address in every From: field, each once, in order.
    Every From: of the header counts, even after a line that is not a field
    (where the email package would call the rest body): an extra author is
    checked, never hidden."""
    head = _header_of(message)
    values = [" ".join(found.group(1).decode("ascii", "surrogateescape").split())
              for found in _FROM_FIELD.finditer(head)]
    domains: list[str] = []
    for _name, address in getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and _domain_like(domain) and domain not in domains:
            domains.append(domain)
    return domains


def _header_of(message: bytes) -> bytes:
    """What comes before the first empty line (CRLF or LF), or all of it."""
    if message.startswith((b"\n", b"\r\n")):
        return b""
    ends = [end for end in (message.find(b"\n\n"), message.find(b"\n\r\n")) if end >= 0]
    return message[:min(ends)] if ends else message


_FROM_FIELD = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


_psl: Any = None
_psl_lock = threading.Lock()


def organisational_domain(domain: str) -> str:
    """The registered domain (one label below the public suffix, RFC 7489 3.2);
    the name itself when it is a public suffix. Unknown TLDs (.test) count as
    public suffixes, so a.b.example.test belongs to example.test."""
    return _organisational(domain.lower().rstrip("."))


@functools.lru_cache(maxsize=4096)        # asked four times a message, for a few domains
def _organisational(domain: str) -> str:
    global _psl
    with _psl_lock:
        if _psl is None:
            module = require("publicsuffixlist", "[checks] dmarc")
            _psl = module.PublicSuffixList()
    return _psl.privatesuffix(domain) or domain


def _domain_like(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) > 1 and all(0 < len(label) < 64 and not label.startswith("[")
                                   for label in labels)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value or ""


def _clean(text: str, limit: int = 160) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _comment(text: str) -> str:
    """Text safe inside an RFC 5322 comment: no parentheses, backslashes or ';'."""
    return re.sub(r"[()\\;]", " ", _clean(text, 80)).strip()
