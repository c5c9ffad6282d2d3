"""DNS for the screening checks: one resolver per name-server list ([relay]
nameservers, or the system's) with a bounded time per question and a shared
cache that honours TTLs; and `require`, which loads an optional library or
names the Debian and PyPI packages it comes from."""

from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any

from ..config.schema import HostPort
from ..core.errors import MailError

LIFETIME = 5.0           # seconds for one question, every retry and name server included
TRY_TIMEOUT = 2.0        # seconds for one try at one name server (then the next, or again)
CACHE_ENTRIES = 20_000   # answers kept per name-server list (LRU; each one until its TTL)

# The optional libraries of the checks: import name -> (Debian package, PyPI package).
# Debian 12 has no package of publicsuffixlist (its python3-publicsuffix2 has a
# list from 2019 and another API), hence None: the error names PyPI alone.
LIBRARIES: dict[str, tuple[str | None, str]] = {
    "dns": ("python3-dnspython", "dnspython"),
    "dkim": ("python3-dkim", "dkimpy"),
    "spf": ("python3-spf", "pyspf"),
    "publicsuffixlist": (None, "publicsuffixlist"),
}


class MissingLibrary(MailError):
    """A check needs a library that is not installed; the text names its packages."""

    def __init__(self, module: str, needed_for: str):
        debian, pypi = LIBRARIES[module.partition(".")[0]]
        ways = ([f"apt install {debian}"] if debian else []) + [f"pip install {pypi}"]
        super().__init__(f"{needed_for} needs the Python package {pypi} "
                         f"({' or '.join(ways)})")
        self.module = module
        self.needed_for = needed_for
        self.debian = debian
        self.pypi = pypi


def require(module: str, needed_for: str) -> ModuleType:
    """`module` imported (e.g. "dns.resolver", "spf"), or MissingLibrary saying
    what needs it ("[checks] spf") and how to install it."""
    if module.partition(".")[0] not in LIBRARIES:
        raise ValueError(f"{module} is not a library the checks know")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingLibrary(module, needed_for) from None


class DnsFailure(MailError):
    """A question got no usable answer: no reply in time, SERVFAIL, no name server.
    Temporary: asking again later may work."""


class Resolver:
    """Look-ups through one list of name servers (empty: the system's), shared by
    every thread: dnspython's Resolver is safe to share while nobody changes its
    settings, and its LRUCache takes a lock. Answers, NXDOMAIN and "no such
    record" are kept for their TTL."""

    def __init__(self, nameservers: tuple[HostPort, ...] = ()):
        self.nameservers = nameservers
        self._resolver: Any = None
        self._lock = threading.Lock()
        # (name, type) -> (expires, records): answers dnspython gave, until their TTL
        # runs out. Asking dnspython's own cache costs about as much as the check
        # that asks (a Name parsed, a _Resolution made); a dict costs nothing.
        self._answers: dict[tuple[str, str], tuple[float, list[Any]]] = {}

    def records(self, name: str, rdtype: str, *, lifetime: float = LIFETIME) -> list[Any]:
        """The records (dnspython rdata) of `name`; [] when the name does not exist,
        has no such record, or cannot be a DNS name; DnsFailure when DNS does not say."""
        if lifetime <= 0:
            raise DnsFailure(f"no time left to look up {name} {rdtype}")
        key = (name.lower(), rdtype)
        kept = self._answers.get(key)
        if kept is not None and kept[0] > time.time():
            return kept[1]
        dns = _dnspython()
        resolver = self._dnspython_resolver(dns)
        try:
            answer = resolver.resolve(name, rdtype, search=False, lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsFailure(f"no answer for {name} {rdtype} within {lifetime:g}s") from None
        except dns.resolver.NoNameservers:
            raise DnsFailure(f"no name server could answer {name} {rdtype} "
                             "(SERVFAIL or refused)") from None
        except (dns.exception.SyntaxError, dns.name.NameTooLong, dns.name.IDNAException,
                UnicodeError, ValueError):
            return []                  # not a DNS name (empty label, too long, bad IDNA)
        except dns.exception.DNSException as error:
            raise DnsFailure(f"look-up of {name} {rdtype} failed: "
                             f"{type(error).__name__}") from None
        records = list(answer)
        if len(self._answers) >= CACHE_ENTRIES:
            self._answers.clear()                     # rare: start afresh, not an LRU
        self._answers[key] = (answer.expiration, records)
        return records

    def txt(self, name: str, *, lifetime: float = LIFETIME) -> list[bytes]:
        """Each TXT record of `name` as one byte string (its strings joined, RFC 7208 3.3)."""
        return [b"".join(record.strings) for record in self.records(name, "TXT",
                                                                     lifetime=lifetime)]

    def _dnspython_resolver(self, dns: Any) -> Any:
        with self._lock:
            if self._resolver is None:
                try:
                    resolver = dns.resolver.Resolver(configure=not self.nameservers)
                except dns.resolver.NoResolverConfiguration:
                    raise DnsFailure("no name server configured (/etc/resolv.conf); "
                                     "set [relay] nameservers") from None
                if self.nameservers:
                    use_nameservers(resolver, self.nameservers)
                resolver.timeout = TRY_TIMEOUT
                resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
                self._resolver = resolver
            return self._resolver


_resolvers: dict[tuple[HostPort, ...], Resolver] = {}
_resolvers_lock = threading.Lock()


def resolver(nameservers: tuple[HostPort, ...] = ()) -> Resolver:
    """The process-wide Resolver for this name-server list (and so its cache):
    sessions and reloads that keep the list share answers."""
    with _resolvers_lock:
        found = _resolvers.get(nameservers)
        if found is None:
            found = _resolvers[nameservers] = Resolver(nameservers)
        return found


def forget_resolvers() -> None:
    """Drop every Resolver and its cache (tests, whose name servers come and go)."""
    with _resolvers_lock:
        _resolvers.clear()


def use_nameservers(resolver: Any, nameservers: tuple[HostPort, ...]) -> None:
    """Point a dnspython Resolver at these name servers ([relay] nameservers).
    dnspython 2.4 and later take Nameserver objects, port included; 2.3
    (Debian 12's python3-dnspython) has no dns.nameserver and takes addresses,
    with their ports in nameserver_ports."""
    try:
        nameserver = importlib.import_module("dns.nameserver")
    except ImportError:
        resolver.nameservers = [ns.host for ns in nameservers]
        resolver.nameserver_ports = {ns.host: ns.port for ns in nameservers}
        return
    resolver.nameservers = [nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers]


def _dnspython() -> Any:
    """The dnspython package with the submodules used here, or MissingLibrary."""
    for module in ("dns.exception", "dns.name", "dns.resolver"):
        require(module, "the DNS-based checks ([checks] dnsbl, spf, dmarc)")
    return importlib.import_module("dns")
