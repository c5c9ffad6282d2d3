"""dns-records [DOMAIN...] [--check]: the DNS records each local domain should
publish, in zone-file syntax, and whether the DNS has them.

What is printed, per domain: MX (-> [server] hostname), SPF, one DKIM TXT
record per [dkim] algorithm (from the keys on disk), DMARC, and the RFC 6186
/ RFC 8314 SRV records of the listeners that are on beyond loopback; before
them, advice (comments) on the A/AAAA and PTR records of [server] hostname.

SPF is `v=spf1 mx -all`: this server, the domain's MX, is the one that sends.
In smarthost mode the smarthost sends, so its domain is included: the
smarthost's host name without its first label (smtp.provider.example ->
include:provider.example), or ip4:/ip6: for an address; a comment says to
check the provider's documented include.

--check asks the DNS ([relay] nameservers, else the system's resolver; each
question bounded in time) and prints ok, missing or differs (with the
published value) per record, or unknown when no answer came; exit 0 when
every record is ok, 1 otherwise. Records are compared for meaning, not
bytes: TXT strings joined; SPF mechanisms of one qualifier, and DMARC tags,
in any order; case and spacing ignored; DKIM by key type and key; MX and
SRV by target (and port); names without their trailing dot. DMARC is ok at
any policy (none, quarantine, reject): raising it is the plan, not a
difference. A DKIM key not made yet is a comment (run dkim-keygen), not a
failed record: signing is optional. Besides the records, --check looks up
the A/AAAA of [server] hostname and, in mx mode, each address's PTR.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..checks.dns import use_nameservers
from ..checks.trust import is_loopback
from ..config import schema as config_module
from ..outbound import dkim
from .common import EXIT_FAILURE, EXIT_OK, UsageError

TTL = 3600
TXT_STRING = 255                      # octets in one character-string (RFC 1035 3.3)
LIFETIME = 5.0                        # seconds for one question, retries included
TRY_TIMEOUT = 2.0                     # seconds for one try at one name server
# RFC 6186 services, implicit TLS preferred (lower priority value; RFC 8314 5.1).
SRV_SERVICES = (("submissions", 0), ("submission", 10), ("imaps", 0), ("imap", 10),
                ("pop3s", 0), ("pop3", 10))
DMARC_POLICIES = ("none", "quarantine", "reject")
_SPF_MODIFIER = re.compile(r"[a-z][a-z0-9_.-]*=")      # redirect=..., exp=... (RFC 7208 6)


@dataclass(frozen=True)
class Record:
    """One record to publish. `purpose` says how --check compares it."""
    name: str                         # absolute, ending in "."
    rtype: str                        # MX, TXT or SRV
    purpose: str                      # MX, SPF, DKIM, DMARC or SRV
    value: str                        # MX/SRV: the target, absolute; TXT: the text
    priority: int = 0                 # MX preference, SRV priority
    port: int = 0                     # SRV

    def rdata(self) -> str:
        if self.rtype == "MX":
            return f"{self.priority} {self.value}"
        if self.rtype == "SRV":
            return f"{self.priority} 1 {self.port} {self.value}"
        return txt_strings(self.value)

    def zone_line(self) -> str:
        return f"{self.name} {TTL} IN {self.rtype} {self.rdata()}"


def txt_strings(text: str) -> str:
    """TXT data in zone-file syntax: quoted strings of at most 255 octets."""
    raw = text.encode("ascii")
    parts = [raw[i:i + TXT_STRING].decode("ascii") for i in range(0, len(raw), TXT_STRING)]
    return " ".join('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for part in parts or [""])


def absolute(name: str) -> str:
    return name.lower().rstrip(".") + "."


def chosen_domains(config: config_module.Config, given: list[str]) -> list[str]:
    """The domains named on the command line (each must be local), or all of them."""
    if not given:
        return list(config.domains)
    chosen = []
    for name in given:
        domain = name.strip().lower().rstrip(".")
        if domain not in config.domains:
            raise UsageError(f"{name} is not one of this server's [domains] "
                             f"({', '.join(config.domains)})")
        chosen.append(domain)
    return chosen


# ---------------------------------------------------------------- what to publish

Entry = Record | str                  # a record, or a comment line (without the "; ")


def host_advice(config: config_module.Config) -> list[str]:
    host = config.server.hostname
    lines = [f"{host} ([server] hostname) is where the MX and SRV records point: it needs",
             "the server's public address, and that address a PTR record back to the name",
             "(set by whoever gives you the address: ask your ISP; big providers refuse",
             "mail from an address without one). Publish:",
             f"  {absolute(host)} {TTL} IN A <your public IPv4 address>",
             f"  {absolute(host)} {TTL} IN AAAA <your public IPv6 address, if you have one>"]
    if "." not in host:
        lines.append(f"WARNING: {host} is not a full DNS name: set [server] hostname to one")
    return lines


def domain_entries(config: config_module.Config, domain: str) -> list[Entry]:
    host = absolute(config.server.hostname)
    entries: list[Entry] = [Record(absolute(domain), "MX", "MX", host, priority=10)]
    entries += _smtp_notes(config)
    spf, note = spf_text(config)
    entries.append(Record(absolute(domain), "TXT", "SPF", spf))
    if note:
        entries.append(note)
    entries += dkim_entries(config, domain)
    entries.append(Record(absolute(f"_dmarc.{domain}"), "TXT", "DMARC",
                          f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"))
    for service, priority in SRV_SERVICES:
        addresses = getattr(config.listen, service, ())      # imap/imaps come later
        public = sorted({address.port for address in addresses if not is_loopback(address.host)})
        if addresses and not public:
            entries.append(f"no _{service}._tcp SRV record: [listen] {service} is on loopback only")
        entries += [Record(absolute(f"_{service}._tcp.{domain}"), "SRV", "SRV", host,
                           priority=priority, port=port) for port in public]
    return entries


def _smtp_notes(config: config_module.Config) -> list[str]:
    public = {address.port for address in config.listen.smtp if not is_loopback(address.host)}
    if not public:
        return ["[listen] smtp is off or on loopback only: the world cannot deliver to this "
                "server yet"]
    if 25 not in public:
        return [f"the world delivers to port 25: forward it on your router to port "
                f"{min(public)} ([listen] smtp)"]
    return []


def spf_text(config: config_module.Config) -> tuple[str, str | None]:
    """The SPF record and, when mail leaves through the smarthost (smarthost mode,
    or a [routes] destination = smarthost), a comment on where its include comes from."""
    smarthost = config.relay.smarthost
    routed = any(route == config_module.VIA_SMARTHOST for route in config.routes.values())
    if (config.relay.mode != "smarthost" and not routed) or smarthost is None:
        return "v=spf1 mx -all", None
    try:
        address = ipaddress.ip_address(smarthost.host)
        return (f"v=spf1 mx ip{address.version}:{address} -all",
                f"ip{address.version}:{address} is [relay] smarthost")
    except ValueError:
        pass
    labels = smarthost.host.lower().rstrip(".").split(".")
    include = ".".join(labels[1:]) if len(labels) > 2 else ".".join(labels)
    return (f"v=spf1 mx include:{include} -all",
            f"include:{include} is [relay] smarthost {smarthost.host} without its first "
            "label: your provider documents the exact include to use")


def dkim_entries(config: config_module.Config, domain: str) -> list[Entry]:
    entries: list[Entry] = []
    for algorithm, selector in config.dkim.selectors().items():
        name = f"{selector}._domainkey.{domain}"
        try:
            key = dkim.load_key(config.server.data_dir, domain, algorithm, selector)
        except dkim.DkimError as error:
            entries.append(f"{name}: {error}")
            continue
        if key is None:
            entries.append(f"{name}: no {algorithm} key yet: run `mailbox_appliance.py "
                           f"dkim-keygen {domain}`, then dns-records again")
        else:
            entries.append(Record(absolute(name), "TXT", "DKIM", key.public_record()))
    return entries


def print_entries(entries: Iterable[Entry]) -> None:
    for entry in entries:
        print(entry.zone_line() if isinstance(entry, Record) else f"; {entry}")


# ---------------------------------------------------------------- the command

def cmd_dns_records(args) -> int:
    config = config_module.load(args.config, tls_files=False)
    domains = chosen_domains(config, args.domains)
    if args.check:
        return check(config, domains)
    print_entries(host_advice(config))
    for domain in domains:
        print(f"\n; {domain}")
        print_entries(domain_entries(config, domain))
    return EXIT_OK


# ---------------------------------------------------------------- --check

class LookupFailed(Exception):
    """No usable answer came (time-out, SERVFAIL, no name server)."""


def make_resolver(config: config_module.Config) -> Any:
    """dnspython's resolver for [relay] nameservers, or the system's."""
    try:
        import dns.resolver
    except ImportError:
        raise UsageError("dns-records --check needs the Python package dnspython "
                         "(apt install python3-dnspython, or pip install dnspython)") from None
    servers = config.relay.nameservers
    try:
        resolver = dns.resolver.Resolver(configure=not servers)
    except dns.resolver.NoResolverConfiguration:
        raise UsageError("dns-records --check: no name server in /etc/resolv.conf; "
                         "set [relay] nameservers") from None
    if servers:
        use_nameservers(resolver, servers)
    resolver.lifetime = LIFETIME
    resolver.timeout = TRY_TIMEOUT
    return resolver


def lookup(resolver: Any, name: str, rtype: str) -> list[Any]:
    """The records of one type at `name`: [] when there are none (NXDOMAIN or no
    data); LookupFailed when no answer came. The only place that asks the DNS."""
    import dns.exception
    import dns.resolver
    try:
        return list(resolver.resolve(name, rtype, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as error:
        raise LookupFailed(str(error) or type(error).__name__) from None


@dataclass(frozen=True)
class Verdict:
    status: str                       # ok | missing | differs | unknown
    subject: str                      # what was looked for, as printed
    detail: str = ""                  # "published: ..." (differs), "no answer: ..." (unknown)

    def line(self) -> str:
        return f"{self.status:<8} {self.subject}" + (f"   {self.detail}" if self.detail else "")


def check(config: config_module.Config, domains: list[str]) -> int:
    resolver = make_resolver(config)
    verdicts: list[Verdict] = []

    def show(verdict: Verdict) -> None:
        verdicts.append(verdict)
        print(verdict.line(), flush=True)

    for verdict in host_verdicts(resolver, config):
        show(verdict)
    for domain in domains:
        print(f"; {domain}")
        for entry in domain_entries(config, domain):
            if isinstance(entry, str):
                print(f"; {entry}")
            else:
                show(record_verdict(resolver, entry))
    bad = [v for v in verdicts if v.status != "ok"]
    print(f"; {len(verdicts) - len(bad)} of {len(verdicts)} ok"
          + ("; DNS changes can take up to their TTL to be seen" if bad else ""))
    return EXIT_FAILURE if bad else EXIT_OK


def host_verdicts(resolver: Any, config: config_module.Config) -> list[Verdict]:
    """[server] hostname has an address; in mx mode, each address a PTR back to it."""
    import dns.reversename
    host = absolute(config.server.hostname)
    subject = f"{host} A/AAAA (the server's public address)"
    try:
        addresses = [r.address for rtype in ("A", "AAAA") for r in lookup(resolver, host, rtype)]
    except LookupFailed as error:
        return [Verdict("unknown", subject, f"no answer: {error}")]
    if not addresses:
        return [Verdict("missing", subject)]
    verdicts = [Verdict("ok", f"{host} A/AAAA {' '.join(addresses)}")]
    if config.relay.mode != "mx":
        return verdicts               # the smarthost sends: its PTR is what receivers see
    for address in addresses:
        reverse = dns.reversename.from_address(address).to_text()
        subject = f"{reverse} PTR {host}"
        try:
            names = [absolute(r.target.to_text()) for r in lookup(resolver, reverse, "PTR")]
        except LookupFailed as error:
            verdicts.append(Verdict("unknown", subject, f"no answer: {error}"))
            continue
        status = "ok" if host in names else "differs" if names else "missing"
        verdicts.append(Verdict(status, subject, f"published: {' '.join(names)}"
                                if status == "differs" else ""))
    return verdicts


def record_verdict(resolver: Any, record: Record) -> Verdict:
    subject = f"{record.name} {record.rtype} {record.rdata()}"
    try:
        answers = lookup(resolver, record.name, record.rtype)
    except LookupFailed as error:
        return Verdict("unknown", subject, f"no answer: {error}")
    if record.rtype == "TXT":
        # the other TXT records at the name (SPF beside a site verification) are not ours
        answers = [text for text in (b"".join(r.strings).decode("utf-8", "replace")
                                     for r in answers) if _kind_of_txt(text) == record.purpose]
        found = len(answers) == 1 and same_txt(record.purpose, answers[0], record.value)
        shown = " ".join(txt_strings(text) for text in answers)
    elif record.rtype == "MX":
        best = min((r.preference for r in answers), default=None)
        found = any(absolute(r.exchange.to_text()) == record.value and r.preference == best
                    for r in answers)
        shown = ", ".join(f"{r.preference} {absolute(r.exchange.to_text())}" for r in answers)
    else:
        found = any(absolute(r.target.to_text()) == record.value and r.port == record.port
                    for r in answers)
        shown = ", ".join(f"{r.priority} {r.weight} {r.port} {absolute(r.target.to_text())}"
                          for r in answers)
    if not answers:
        return Verdict("missing", subject)
    return Verdict("ok", subject) if found else Verdict("differs", subject, f"published: {shown}")


# ---------------------------------------------------------------- comparing TXT records

def _kind_of_txt(text: str) -> str | None:
    words = text.strip().lower()
    if words == "v=spf1" or words.startswith("v=spf1 "):
        return "SPF"
    tags = _tags(text)
    if tags.get("v", "").lower() == "dmarc1":
        return "DMARC"
    if "p" in tags and tags.get("v", "DKIM1").upper() == "DKIM1":
        return "DKIM"
    return None


def _tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 3.2, RFC 7489 6.4): names as written, values stripped."""
    tags = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags[name.strip()] = value.strip()
    return tags


def same_txt(purpose: str, published: str, expected: str) -> bool:
    if purpose == "SPF":
        return _spf_form(published) == _spf_form(expected)
    theirs, ours = _tags(published), _tags(expected)
    if purpose == "DKIM":
        return (theirs.get("k", "rsa").lower() == ours.get("k", "rsa").lower()
                and "".join(theirs.get("p", "").split()) == "".join(ours["p"].split()))
    return (theirs.get("p", "").lower() in DMARC_POLICIES
            and _mailtos(theirs.get("rua", "")) == _mailtos(ours.get("rua", "")))


def _spf_form(text: str) -> tuple[str, tuple[tuple[str, frozenset[str]], ...], frozenset[str]]:
    """An SPF record reduced to what decides its result (RFC 7208 4.6): the
    mechanisms in order, but a run of mechanisms with one qualifier in any order
    (they give the same result whichever matches first); "+" is the default
    qualifier; modifiers anywhere; case and spacing do not count."""
    words = text.lower().split()
    modifiers = frozenset(word for word in words[1:] if _SPF_MODIFIER.match(word))
    runs: list[tuple[str, set[str]]] = []
    for word in words[1:]:
        if word in modifiers:
            continue
        qualifier, mechanism = (word[0], word[1:]) if word[0] in "+-~?" else ("+", word)
        if runs and runs[-1][0] == qualifier:
            runs[-1][1].add(mechanism)
        else:
            runs.append((qualifier, {mechanism}))
    return (words[0] if words else "",
            tuple((qualifier, frozenset(group)) for qualifier, group in runs), modifiers)


def _mailtos(value: str) -> frozenset[str]:
    return frozenset(uri.strip().lower() for uri in value.split(",") if uri.strip())
