"""Who a client is: its IP address, whether it is trusted ([policy]
trusted_networks: may relay without AUTH, skips the filter), and whether it
may send a password in clear text ([tls] plaintext_auth).

SMTP and POP3 share these rules, so they mean the same on every port.
"""

from __future__ import annotations

import ipaddress

from ..config.schema import Config


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_trusted(config: Config, ip: str) -> bool:
    """Is `ip` in [policy] trusted_networks (may relay without AUTH, skips the filter)?"""
    address = ip_of(ip)
    return address is not None and any(address in net for net in config.policy.trusted_networks)


def is_loopback(ip: str) -> bool:
    address = ip_of(ip)
    return address is not None and address.is_loopback


def plaintext_auth_allowed(config: Config, ip: str, tls_active: bool) -> bool:
    """May a password travel on this connection ([tls] plaintext_auth)?"""
    if tls_active:
        return True
    mode = config.tls.plaintext_auth
    return mode == "always" or (mode == "local" and is_loopback(ip))
