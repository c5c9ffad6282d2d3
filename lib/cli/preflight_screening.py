"""check's warnings about [checks]: a library a configured check needs, a
scanner that cannot be reached, a blocklist that does not answer its test
point. Each names the key; none stops the server (the checks fail open or
tempfail as configured), but each means a check is not doing its job."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..checks import dnsbl, scanner_io
from ..checks.dns import DnsFailure, MissingLibrary, require, resolver
from ..config.schema import Config
from ..config.values import HostPort

PROBE_SECONDS = 3.0          # for each scanner and each list


def warnings(config: Config) -> list[str]:
    checks = config.checks
    found: list[str] = []
    needs = ([("spf", "[checks] spf")] if checks.spf != "off" else []) + \
        ([("spf", "[checks] dmarc"), ("dkim", "[checks] dmarc"),
          ("publicsuffixlist", "[checks] dmarc")] if checks.dmarc != "off" else [])
    if checks.dnsbl or needs:
        needs.append(("dns.resolver", "[checks] dnsbl, spf and dmarc"))
    for module, key in needs:
        try:
            require(module, key)
        except MissingLibrary as error:
            found.append(str(error))
    for key, address in (("spamd", checks.spamd), ("clamd", checks.clamd)):
        if address is not None:
            found += _unreachable(key, address)
    if checks.rspamd:
        found += _unreachable("rspamd", _url_address(checks.rspamd))
    if checks.dnsbl and not any("dns.resolver" in line or "dnspython" in line for line in found):
        found += _silent_lists(config)
    return found


def _unreachable(key: str, address) -> list[str]:
    try:
        scanner_io.connect(address, scanner_io.Deadline(PROBE_SECONDS)).close()
    except (OSError, TimeoutError) as error:
        return [f"[checks] {key}: cannot reach {address}: {error.strerror or error}; with "
                "scanner_failure = tempfail every stranger's message gets 451 until it runs"]
    return []


def _url_address(url: str):

    parts = urlsplit(url)
    return HostPort(parts.hostname or "", parts.port or 80)


def _silent_lists(config: Config) -> list[str]:
    """Each list must list its RFC 5782 test point 127.0.0.2: one that does not
    is misspelt, gone, or refusing us (public resolvers get error codes)."""
    found = []
    ask = resolver(config.relay.nameservers)
    for zone in config.checks.dnsbl:
        try:
            answer = dnsbl.lookup("127.0.0.2", zone, ask, lifetime=PROBE_SECONDS)
        except DnsFailure as error:
            found.append(f"[checks] dnsbl: {zone} did not answer ({error})")
            continue
        if not answer.listed:
            why = f": {answer.warning}" if answer.warning else ""
            found.append(f"[checks] dnsbl: {zone} does not list its test point 127.0.0.2{why}: "
                         "a misspelt or dead list, or one that refuses our resolver")
    return found
