"""Where mail for a domain goes: [routes], the smarthost, or the domain's MX
hosts (dnspython, loaded only when needed), as Hops to try in order."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from typing import Any

from ..checks.dns import use_nameservers
from ..config.schema import VIA_SMARTHOST, Config, HostPort
from .results import AttemptFailed, FailureKind, HostFailure, RemoteReply

DNS_LIFETIME = 20.0          # seconds for one look-up, every retry and server included


@dataclass(frozen=True)
class Hop:
    """One host to try, with its addresses in the order to try them."""
    name: str                         # for TLS (SNI, verification) and the log
    addresses: tuple[str, ...]
    port: int
    kind: str                         # "route", "mx", "smarthost"


class HopFinder:
    """Where mail for a domain goes: [routes], else smarthost, else MX records.

    `hops` raises AttemptFailed when there is no host to try: a RemoteReply for
    a domain that takes no mail (no such domain, a null MX), a HostFailure
    when DNS cannot say for now."""

    def __init__(self, config: Config):
        self.config = config
        self._resolver: Any = None

    def hops(self, domain: str) -> list[Hop]:
        relay = self.config.relay
        route = self.config.routes.get(domain)
        if isinstance(route, HostPort):
            return [self._static(route, "route")]
        if self.via_smarthost(domain) and relay.smarthost is not None:
            return [self._static(relay.smarthost, "smarthost")]
        if domain.startswith("["):                 # an address literal: that host
            literal = domain[1:-1]
            literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
            return [Hop(literal, (literal,), relay.mx_port, "mx")]
        return self._mx_hops(domain)

    def via_smarthost(self, domain: str) -> bool:
        """Does mail for `domain` go through the smarthost: in smarthost mode unless
        a [routes] host takes it; in mx mode when [routes] says `smarthost`."""
        route = self.config.routes.get(domain)
        if route == VIA_SMARTHOST:
            return True
        return route is None and self.config.relay.mode == "smarthost"

    def _static(self, target: HostPort, kind: str) -> Hop:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise AttemptFailed(HostFailure(
                FailureKind.DNS, f"could not resolve {target.host}: "
                                 f"{_plain(error.strerror or 'look-up failed')}")) from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        return Hop(target.host, addresses, target.port, kind)

    def _dns(self) -> Any:
        """The resolver ([relay] nameservers, or the system's), made once."""
        if self._resolver is None:
            dns = _dnspython()
            nameservers = self.config.relay.nameservers
            resolver = dns.resolver.Resolver(configure=not nameservers)
            if nameservers:
                use_nameservers(resolver, nameservers)
            resolver.lifetime = DNS_LIFETIME
            self._resolver = resolver
        return self._resolver

    def _query(self, name: str, rdtype: str) -> list:
        """Answers, [] when the name has no such records; raises NXDOMAIN for a
        name that does not exist and AttemptFailed for the rest."""
        resolver = self._dns()
        dns = _dnspython()
        try:
            return list(resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.NoAnswer:
            return []
        except dns.exception.Timeout:
            why = "timed out"
        except dns.resolver.NoNameservers:
            why = "no name server could answer"
        except dns.exception.DNSException:
            why = "failed"
        raise AttemptFailed(HostFailure(FailureKind.DNS,
                                        f"DNS look-up of {name} {rdtype} {why}")) from None

    def _addresses(self, name: str) -> tuple[str, ...]:
        found = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [record.address for record in self._query(name, rdtype)]
            except _dnspython().resolver.NXDOMAIN:
                return ()
        return tuple(found)

    def _mx_hops(self, domain: str) -> list[Hop]:
        port = self.config.relay.mx_port
        try:
            records = self._query(domain, "MX")
        except _dnspython().resolver.NXDOMAIN:
            raise AttemptFailed(RemoteReply(550, "5.1.2",
                                            f"domain {domain} does not exist")) from None
        if not records:                            # RFC 5321 5.1: the implicit MX
            addresses = self._addresses(domain)
            if not addresses:
                raise AttemptFailed(RemoteReply(550, "5.1.2",
                                                f"{domain} has no MX and no address"))
            return [Hop(domain, addresses, port, "mx")]
        if any(r.preference == 0 and r.exchange.to_text() == "." for r in records):
            # RFC 7505 4.2: a null MX says the domain accepts no mail at all
            raise AttemptFailed(RemoteReply(556, "5.1.10",
                                            f"{domain} accepts no mail (null MX)"))
        by_preference: dict[int, list[str]] = {}
        for record in records:
            by_preference.setdefault(record.preference, []).append(
                record.exchange.to_text().rstrip("."))
        hops = []
        for preference in sorted(by_preference):
            names = by_preference[preference]
            random.shuffle(names)                  # RFC 5321 5.1: spread equal preferences
            for name in names:
                addresses = self._addresses(name)
                if addresses:
                    hops.append(Hop(name, addresses, port, "mx"))
        if not hops:
            raise AttemptFailed(HostFailure(FailureKind.DNS,
                                            f"no address found for any MX host of {domain}"))
        return hops


def _dnspython() -> Any:
    """The dnspython package, or AttemptFailed naming it (DESIGN 1)."""
    try:
        import dns.exception
        import dns.resolver
    except ImportError:
        raise AttemptFailed(HostFailure(FailureKind.LOCAL,
                                        "MX look-ups need the dnspython package "
                                        "(apt install python3-dnspython)")) from None
    return dns


def _plain(text: str) -> str:
    """An OS message as part of a sentence: "Name or service not known" -> "name ..."."""
    return text[:1].lower() + text[1:]
