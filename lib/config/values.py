"""INI values: the types a key may hold (HostPort, Rate) and the converters
that turn a key's text into them, each raising Invalid with a message for
the user (the loader adds the file, line, section and key)."""

from __future__ import annotations

import ipaddress
import re
import shlex
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.addresses import AddressError, parse_domain

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Invalid(ValueError):
    """A value failed its converter; the loader adds section, key and line."""


# ---------------------------------------------------------------- value types

@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Rate:
    count: int
    window: float   # seconds

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ---------------------------------------------------------------- converters

def to_text(value: str) -> str:
    return value


def to_int(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise Invalid(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise Invalid(f"{number} is out of range ({low} to {high})")
        return number
    return convert


def to_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kmgKMG]?)[bB]?", value)
    if not match:
        raise Invalid(f"{value!r} is not a size (a number with an optional K, M or G, e.g. 25M)")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise Invalid("a size must be more than 0")
    return size


def to_duration(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdSMHD]?)", value)
    if not match:
        raise Invalid(f"{value!r} is not a duration (a number with s, m, h or d, e.g. 5m)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise Invalid("a duration must be more than 0")
    return seconds


def to_delay(value: str) -> float:
    """A duration that may be 0: a pause or a delay that can be turned off."""
    if re.fullmatch(r"0+(?:\.0+)?\s*[smhdSMHD]?", value):
        return 0.0
    return to_duration(value)


def to_duration_list(value: str) -> tuple[float, ...]:
    items = split_list(value)
    if not items:
        raise Invalid("needs at least one duration, e.g. 5m, 15m, 1h")
    return tuple(to_duration(item) for item in items)


def to_rate(value: str) -> Rate:
    count, slash, window = value.partition("/")
    if not slash:
        raise Invalid(f"{value!r} is not a rate (count/duration, e.g. 5/10m)")
    return Rate(to_int(1, 1_000_000)(count.strip()), to_duration(window.strip()))


def to_choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.lower() not in choices:
            raise Invalid(f"{value!r} is not one of: {', '.join(choices)}")
        return value.lower()
    return convert


def to_optional_hostname(value: str) -> str:
    return to_hostname(value) if value else ""


def to_hostname(value: str) -> str:
    try:
        return parse_domain(value.rstrip("."), literal_ok=False)
    except AddressError as error:
        raise Invalid(str(error)) from None


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def to_host_port(value: str, *, default_port: int | None = None,
                 ip_only: bool = True, any_port: bool = False) -> HostPort:
    """`1.2.3.4:25`, `[::1]:25`, or (ip_only=False) `host.example:587`."""
    text = value.strip()
    if default_port is not None and ":" in text and not text.startswith("["):
        try:                                # a bare IPv6 address: the default port
            return HostPort(str(ipaddress.IPv6Address(text)), default_port)
        except ValueError:
            pass
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text) or \
        re.fullmatch(r"([^:\[\]]+)(?::(\d+))?", text)
    example = "like 0.0.0.0:25 or [::]:25" if ip_only else "like host.example:587"
    if not match:
        raise Invalid(f"{value!r} is not host:port ({example})")
    host, port = match.group(1), match.group(2)
    if port is None:
        if default_port is None:
            raise Invalid(f"{value!r} has no port ({example})")
        port = default_port
    port = int(port)
    if not (0 if any_port else 1) <= port <= 65535:
        raise Invalid(f"port {port} is out of range (1 to 65535)")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if ip_only or text.startswith("["):
            raise Invalid(f"{host!r} is not an IP address ({example})") from None
        host = to_hostname(host)
    return HostPort(host, port)


def to_listen_list(value: str) -> tuple[HostPort, ...]:
    """Listening addresses; port 0 means any free port (printed at start, for tests)."""
    return tuple(to_host_port(item, any_port=True) for item in split_list(value))


def to_nameservers(value: str) -> tuple[HostPort, ...]:
    return tuple(to_host_port(item, default_port=53) for item in split_list(value))


def to_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in split_list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise Invalid(f"{item!r} is not a network (like 192.168.1.0/24 or ::1/128)") from None
    return tuple(networks)


def to_command(value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError as error:
        raise Invalid(f"cannot split the command line: {error}") from None


def to_zone_list(value: str) -> tuple[str, ...]:
    return tuple(to_hostname(item) for item in split_list(value))


def to_score(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise Invalid(f"{value!r} is not a number (a spam score, e.g. 10 or 7.5)") from None


def to_switch(value: str) -> bool:
    return to_choice("off", "on")(value) == "on"


def to_optional_service(default_port: int) -> Callable[[str], HostPort | None]:
    """`host:port` of a daemon (the port may be left out), or empty for off."""
    def convert(value: str) -> HostPort | None:
        return to_host_port(value, default_port=default_port, ip_only=False) if value else None
    return convert


def to_socket_or_service(value: str) -> HostPort | Path | None:
    """A unix socket (a path: it has a /) or host:port; empty for off."""
    if not value:
        return None
    if "/" in value:
        return Path(value)
    return to_host_port(value, ip_only=False)


def to_http_url(value: str) -> str:
    if not value:
        return ""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise Invalid(f"{value!r} is not an http:// URL (like http://127.0.0.1:11333)")
    try:
        if parts.port is None:
            raise Invalid(f"{value!r} has no port (rspamd's normal worker: 11333)")
    except ValueError as error:
        raise Invalid(f"{value!r}: {error}") from None
    return value.rstrip("/")


def to_delimiter(value: str) -> str:
    bad = [ch for ch in value if ch.isalnum() or ch in "@.\"\\ " or not ch.isascii()]
    if bad:
        raise Invalid(f"{bad[0]!r} cannot be a recipient delimiter (use e.g. + or -)")
    return value


def to_selector(value: str) -> str:
    """A DKIM selector: one DNS label (RFC 6376 3.1), e.g. mail or 2026a."""
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", value.lower()):
        raise Invalid(f"{value!r} is not a selector (letters, digits and '-', like mail)")
    return value.lower()


def to_algorithms(value: str) -> tuple[str, ...]:
    items = [item.lower() for item in split_list(value)]
    if not items or any(item not in ("rsa", "ed25519") for item in items) or \
            len(set(items)) != len(items):
        raise Invalid(f"{value!r} is not rsa, ed25519, or rsa, ed25519")
    return tuple(items)
