"""The INI file: parsed once into a frozen, validated `Config`.

Every key of every section is declared in `SCHEMA` with its converter and
default; anything not declared is an error, because a typo must not silently
disable a protection. Every error is a `ConfigError` naming the file, line,
section and key. The address map ([domains], [mailboxes], [aliases]) is only
checked for references here; the router checks its graph (loops, postmaster).
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core import passwords
from ..core.addresses import AddressError, parse_domain, parse_mailbox
from ..core.errors import ConfigError

ALL_MAILBOXES = "*"
MAILBOX_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")

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
    items = _split_list(value)
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


def _split_list(value: str) -> list[str]:
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
    return tuple(to_host_port(item, any_port=True) for item in _split_list(value))


def to_nameservers(value: str) -> tuple[HostPort, ...]:
    return tuple(to_host_port(item, default_port=53) for item in _split_list(value))


def to_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in _split_list(value):
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


def to_delimiter(value: str) -> str:
    bad = [ch for ch in value if ch.isalnum() or ch in "@.\"\\ " or not ch.isascii()]
    if bad:
        raise Invalid(f"{bad[0]!r} cannot be a recipient delimiter (use e.g. + or -)")
    return value


# ---------------------------------------------------------------- sections

@dataclass(frozen=True)
class ServerSection:
    hostname: str
    data_dir: Path
    user: str
    log: str
    log_level: str
    recipient_delimiter: str
    pid_file: str


@dataclass(frozen=True)
class ListenSection:
    smtp: tuple[HostPort, ...]
    submission: tuple[HostPort, ...]
    submissions: tuple[HostPort, ...]
    pop3: tuple[HostPort, ...]
    pop3s: tuple[HostPort, ...]

    def listeners(self) -> list[tuple[str, HostPort]]:
        """(kind, address) of every configured listener, in a stable order."""
        return [(kind, address) for kind in LISTENER_KINDS for address in getattr(self, kind)]


LISTENER_KINDS = ("smtp", "submission", "submissions", "pop3", "pop3s")
IMPLICIT_TLS_KINDS = ("submissions", "pop3s")


@dataclass(frozen=True)
class TlsSection:
    cert: Path | None
    key: Path | None
    plaintext_auth: str

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class LimitsSection:
    max_message_size: int
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    command_timeout: float
    auth_failures: Rate
    shutdown_grace: float
    stress_timeout: float       # command_timeout near max_connections (Postfix's stress mode)
    greet_pause: float          # a stranger on port 25 must wait this long for the 220
    error_sleep: float          # each reply to a stranger past 10 errors waits this long


@dataclass(frozen=True)
class PolicySection:
    trusted_networks: tuple
    filter_command: tuple[str, ...]
    filter_timeout: float


@dataclass(frozen=True)
class RelaySection:
    mode: str
    smarthost: HostPort | None
    smarthost_tls: str
    smarthost_user: str
    smarthost_password: str
    smarthost_ca_file: str
    retry: tuple[float, ...]
    give_up_after: float
    nameservers: tuple[HostPort, ...]
    mx_port: int


@dataclass(frozen=True)
class Key:
    name: str
    convert: Callable[[str], Any]
    default: str            # as it would be written in the INI; "" = empty


SCHEMA: dict[str, tuple[type, tuple[Key, ...]]] = {
    "server": (ServerSection, (
        Key("hostname", to_optional_hostname, ""),   # "" = this machine's FQDN
        Key("data_dir", to_text, "/var/lib/mailbox-appliance"),
        Key("user", to_text, ""),
        Key("log", to_text, "stderr"),
        Key("log_level", to_choice("debug", "info", "warning", "error"), "info"),
        Key("recipient_delimiter", to_delimiter, "+"),
        Key("pid_file", to_text, ""),
    )),
    "listen": (ListenSection, tuple(Key(kind, to_listen_list, "") for kind in LISTENER_KINDS)),
    "tls": (TlsSection, (
        Key("cert", to_text, ""),
        Key("key", to_text, ""),
        Key("plaintext_auth", to_choice("never", "local", "always"), "local"),
    )),
    "limits": (LimitsSection, (
        Key("max_message_size", to_size, "25M"),
        Key("max_recipients", to_int(1, 100_000), "100"),
        Key("max_connections", to_int(1, 100_000), "200"),
        Key("max_connections_per_ip", to_int(1, 100_000), "20"),
        Key("command_timeout", to_duration, "5m"),
        Key("auth_failures", to_rate, "5/10m"),
        Key("shutdown_grace", to_duration, "10s"),
        Key("stress_timeout", to_duration, "10s"),
        Key("greet_pause", to_delay, "1s"),
        Key("error_sleep", to_delay, "1s"),
    )),
    "policy": (PolicySection, (
        Key("trusted_networks", to_networks, "127.0.0.0/8, ::1/128"),
        Key("filter_command", to_command, ""),
        Key("filter_timeout", to_duration, "30s"),
    )),
    "relay": (RelaySection, (
        Key("mode", to_choice("mx", "smarthost"), "mx"),
        Key("smarthost", to_text, ""),
        Key("smarthost_tls", to_choice("starttls", "tls", "none"), "starttls"),
        Key("smarthost_user", to_text, ""),
        Key("smarthost_password", to_text, ""),
        Key("smarthost_ca_file", to_text, ""),
        Key("retry", to_duration_list, "5m, 15m, 30m, 1h, 2h, 4h"),
        Key("give_up_after", to_duration, "5d"),
        Key("nameservers", to_nameservers, ""),
        Key("mx_port", to_int(1, 65535), "25"),
    )),
}
MAP_SECTIONS = ("routes", "domains", "mailboxes", "aliases")
SMARTHOST_DEFAULT_PORT = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerSection
    listen: ListenSection
    tls: TlsSection
    limits: LimitsSection
    policy: PolicySection
    relay: RelaySection
    routes: Mapping[str, HostPort]
    domains: Mapping[str, frozenset[str] | str]     # domain -> mailboxes or ALL_MAILBOXES
    mailboxes: Mapping[str, str]                     # name -> password hash
    aliases: Mapping[str, tuple[str, ...]]           # key as written (lower case) -> targets
    lines: Mapping[tuple[str | None, str | None], int] = field(
        repr=False, compare=False, default_factory=lambda: MappingProxyType({}))

    def line_of(self, section: str, key: str | None = None) -> int | None:
        return self.lines.get((section, key))

    def error(self, section: str, key: str | None, message: str) -> ConfigError:
        """A ConfigError located at the key's line in this file."""
        return ConfigError(section, key, message, path=str(self.path),
                           line=self.line_of(section, key))


# ---------------------------------------------------------------- loading

def load(path: str | os.PathLike, tls_files: bool = True) -> Config:
    """Read and validate the INI file at `path`; raise ConfigError on any problem.
    tls_files=False skips the check that [tls] cert and key exist (gencert)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(None, None, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(None, None, f"{path}: cannot read: {error}") from None
    return parse(text, path, tls_files)


def require_listener(config: Config) -> None:
    """A server with no listener refuses every connection while looking alive:
    check, serve and reload refuse such a config (an empty or truncated INI)."""
    if not list(config.listen.listeners()):
        raise config.error("listen", None, "no listener is configured: a server would accept "
                           "no mail (set at least smtp = host:port)")


class _CaseFoldingParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr.lower()      # keys are case-insensitive, like the addresses


def parse(text: str, path: Path, tls_files: bool = True) -> Config:
    """Validate INI `text` as if read from `path` (relative paths resolve against its folder)."""
    lines = _key_lines(text)
    parser = _CaseFoldingParser(
        interpolation=None, delimiters=("=",), comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"), strict=True, empty_lines_in_values=False,
        default_section="\0no-default-section")
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        raise _parser_error(error, path) from None
    try:
        return _build(parser, path, lines, tls_files)
    except ConfigError as error:
        raise error.located(str(path), lines.get((error.section, error.key))) from None


def _parser_error(error: configparser.Error, path: Path) -> ConfigError:
    line = getattr(error, "lineno", None)
    if isinstance(error, configparser.DuplicateOptionError):
        return ConfigError(error.section, error.option, "is set twice in this section",
                           path=str(path), line=line)
    if isinstance(error, configparser.DuplicateSectionError):
        return ConfigError(error.section, None, "section appears twice", path=str(path), line=line)
    if isinstance(error, configparser.MissingSectionHeaderError):
        return ConfigError(None, None, "a key before any [section] header", path=str(path),
                           line=line)
    if isinstance(error, configparser.ParsingError):
        first = error.errors[0] if error.errors else (None, "")
        line = first[0]
        return ConfigError(None, None, f"cannot parse {first[1].strip()!s} "
                           "(expected 'key = value' or '[section]')", path=str(path), line=line)
    return ConfigError(None, None, str(error).splitlines()[0], path=str(path), line=line)


def _key_lines(text: str) -> dict[tuple[str | None, str | None], int]:
    """Where each section and key is written, so errors can point at the line."""
    where: dict[tuple[str | None, str | None], int] = {}
    section = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1:stripped.index("]")].strip()
            where.setdefault((section, None), number)
        elif section is not None and "=" in stripped and not raw[:1].isspace():
            where.setdefault((section, stripped.split("=", 1)[0].strip().lower()), number)
    return where


def _build(parser: configparser.ConfigParser, path: Path,
           lines: Mapping[tuple[str | None, str | None], int], tls_files: bool = True) -> Config:
    known = set(SCHEMA) | set(MAP_SECTIONS)
    for section in parser.sections():
        if section not in known:
            raise ConfigError(section, None, f"unknown section{_nearest(section, known)} "
                                             f"(known: {', '.join(sorted(known))})")
    base = path.resolve().parent
    values = {name: _typed_section(parser, name, cls, keys)
              for name, (cls, keys) in SCHEMA.items()}
    server = _finish_server(values["server"], base)
    tls = _finish_tls(values["tls"], base, tls_files)
    relay = _finish_relay(values["relay"], base)
    listen = values["listen"]
    _check_listeners(listen, tls)
    mailboxes = _mailboxes(parser)
    domains = _domains(parser, mailboxes)
    return Config(
        path=path.resolve(), server=server, listen=listen, tls=tls,
        limits=values["limits"], policy=values["policy"], relay=relay,
        routes=_routes(parser), domains=domains, mailboxes=mailboxes,
        aliases=_aliases(parser, domains, mailboxes),
        lines=MappingProxyType(dict(lines)))


def _nearest(word: str, choices) -> str:
    """ "; did you mean X?" for a likely typo, else nothing."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _typed_section(parser, name: str, cls: type, keys: tuple[Key, ...]):
    given = dict(parser.items(name)) if parser.has_section(name) else {}
    names = {key.name for key in keys}
    for key in given:
        if key not in names:
            raise ConfigError(name, key, f"unknown key{_nearest(key, names)} "
                                         f"(known: {', '.join(sorted(names))})")
    converted = {}
    for key in keys:
        raw = given.get(key.name, key.default).strip()
        try:
            converted[key.name] = key.convert(raw)
        except Invalid as error:
            raise ConfigError(name, key.name, str(error)) from None
    return cls(**converted)


def _finish_server(server: ServerSection, base: Path) -> ServerSection:
    hostname = server.hostname or _machine_hostname()
    data_dir = (base / server.data_dir).resolve() if server.data_dir else None
    if data_dir is None:
        raise ConfigError("server", "data_dir", "must not be empty")
    log = server.log
    if not log:
        raise ConfigError("server", "log", "must be stderr, syslog or a file path")
    if log not in ("stderr", "syslog"):
        log = str((base / log).resolve())
    pid_file = str((base / server.pid_file).resolve()) if server.pid_file else ""
    return ServerSection(hostname=hostname, data_dir=data_dir, user=server.user, log=log,
                         log_level=server.log_level,
                         recipient_delimiter=server.recipient_delimiter, pid_file=pid_file)


def _machine_hostname() -> str:
    try:
        return to_hostname(socket.getfqdn())
    except Invalid:
        return "localhost"


def _finish_tls(tls: TlsSection, base: Path, check_files: bool = True) -> TlsSection:
    cert = (base / tls.cert).resolve() if tls.cert else None
    key = (base / tls.key).resolve() if tls.key else cert
    if key is not None and cert is None:
        raise ConfigError("tls", "key", "is set but [tls] cert is not")
    if check_files and cert is not None and not cert.is_file():
        raise ConfigError("tls", "cert", f"file not found: {cert}")
    if check_files and key is not None and not key.is_file():
        raise ConfigError("tls", "key", f"file not found: {key}")
    return TlsSection(cert=cert, key=key, plaintext_auth=tls.plaintext_auth)


def _check_listeners(listen: ListenSection, tls: TlsSection) -> None:
    seen: dict[HostPort, str] = {}
    for kind, address in listen.listeners():
        if address in seen and address.port != 0:
            raise ConfigError("listen", kind, f"{address} is also used by [listen] {seen[address]}")
        seen[address] = kind
        if kind in IMPLICIT_TLS_KINDS and not tls.enabled:
            raise ConfigError("listen", kind, "needs [tls] cert and key (it speaks TLS only)")


def _finish_relay(relay: RelaySection, base: Path) -> RelaySection:
    smarthost = None
    tls_mode = relay.smarthost_tls
    if relay.smarthost:
        try:
            smarthost = to_host_port(str(relay.smarthost), ip_only=False,   # still the text here
                                     default_port=SMARTHOST_DEFAULT_PORT[tls_mode])
        except Invalid as error:
            raise ConfigError("relay", "smarthost", str(error)) from None
    mode = relay.mode
    if mode == "smarthost" and smarthost is None:
        raise ConfigError("relay", "smarthost", "is required when [relay] mode = smarthost")
    if bool(relay.smarthost_user) != bool(relay.smarthost_password):
        missing = "smarthost_password" if relay.smarthost_user else "smarthost_user"
        raise ConfigError("relay", missing, "smarthost_user and smarthost_password go together")
    if relay.smarthost_password and tls_mode == "none":
        raise ConfigError("relay", "smarthost_password",
                          "refusing to send a password without TLS (smarthost_tls = none)")
    ca_file = ""
    if relay.smarthost_ca_file:
        ca_file = str((base / relay.smarthost_ca_file).resolve())
        if not Path(ca_file).is_file():
            raise ConfigError("relay", "smarthost_ca_file", f"file not found: {ca_file}")
    return RelaySection(mode=mode, smarthost=smarthost, smarthost_tls=tls_mode,
                        smarthost_user=relay.smarthost_user,
                        smarthost_password=relay.smarthost_password,
                        smarthost_ca_file=ca_file, retry=relay.retry,
                        give_up_after=relay.give_up_after, nameservers=relay.nameservers,
                        mx_port=relay.mx_port)


def _map_items(parser, section: str) -> list[tuple[str, str]]:
    items = list(parser.items(section)) if parser.has_section(section) else []
    for key, _ in items:
        if ":" in key and not key.startswith("["):     # "bob: $scrypt$..." (IPv6 routes have [ ])
            raise ConfigError(section, key.split(":", 1)[0].strip(),
                              "written with ':'; use '=' between the name and its value "
                              f"({key.split(':', 1)[0].strip()} = ...)")
    return items


def _domain_key(section: str, key: str) -> str:
    try:
        return to_hostname(key)
    except Invalid as error:
        raise ConfigError(section, key, f"not a domain name: {error}") from None


def _routes(parser) -> Mapping[str, HostPort]:
    routes = {}
    for key, value in _map_items(parser, "routes"):
        domain = _domain_key("routes", key)
        try:
            routes[domain] = to_host_port(value, ip_only=False, default_port=25)
        except Invalid as error:
            raise ConfigError("routes", key, str(error)) from None
    return MappingProxyType(routes)


def _mailboxes(parser) -> Mapping[str, str]:
    mailboxes = {}
    for name, value in _map_items(parser, "mailboxes"):
        if not MAILBOX_NAME.match(name) or name.endswith(".") or ".." in name:
            raise ConfigError("mailboxes", name, "a mailbox name is 1-64 characters: "
                              "a-z, 0-9, '.', '_' or '-', starting with a letter or digit")
        try:
            passwords.parse_hash(value.strip())
        except ValueError as error:
            raise ConfigError("mailboxes", name, f"not a password hash ({error}); "
                              "make one with: mailbox_appliance.py passwd") from None
        mailboxes[name] = value.strip()
    return MappingProxyType(mailboxes)


def _domains(parser, mailboxes: Mapping[str, str]) -> Mapping[str, frozenset[str] | str]:
    domains: dict[str, frozenset[str] | str] = {}
    for key, value in _map_items(parser, "domains"):
        domain = _domain_key("domains", key)
        if domain in domains:
            raise ConfigError("domains", key, "is listed twice")
        value = value.strip()
        if value == ALL_MAILBOXES:
            domains[domain] = ALL_MAILBOXES
            continue
        served = _split_list(value.lower())
        if not served:
            raise ConfigError("domains", key, "needs * (every mailbox) or a list of mailboxes")
        for name in served:
            if name not in mailboxes:
                raise ConfigError("domains", key, f"{name!r} is not in [mailboxes]")
        domains[domain] = frozenset(served)
    return MappingProxyType(domains)


def _aliases(parser, domains, mailboxes) -> Mapping[str, tuple[str, ...]]:
    aliases: dict[str, tuple[str, ...]] = {}
    for key, value in _map_items(parser, "aliases"):
        canonical = _alias_key(key, domains)
        if canonical in aliases:
            raise ConfigError("aliases", key, "is listed twice")
        targets = []
        for target in _split_list(value):
            targets.append(_alias_target(key, target))
        if not targets:
            raise ConfigError("aliases", key, "has no targets")
        aliases[canonical] = tuple(dict.fromkeys(targets))
    return MappingProxyType(aliases)


def _alias_key(key: str, domains) -> str:
    local, at, domain = key.rpartition("@") if "@" in key else (key, "", "")
    if at:
        try:
            domain = to_hostname(domain)
        except Invalid as error:
            raise ConfigError("aliases", key, f"not a domain: {error}") from None
        if domain not in domains:
            raise ConfigError("aliases", key, f"{domain} is not in [domains]")
        if local == "":
            return f"@{domain}"
    if not local or any(ch.isspace() or ch in '"\\' for ch in local):
        raise ConfigError("aliases", key, "not an alias (use name, name@domain or @domain)")
    return f"{local.lower()}@{domain}" if at else local.lower()


def _alias_target(key: str, target: str) -> str:
    if "@" not in target:
        return target.lower()       # a mailbox or a bare alias; the router checks which
    try:
        return str(parse_mailbox(target, utf8=True))
    except AddressError as error:
        raise ConfigError("aliases", key, f"target {target!r} is not an address: {error}") from None
