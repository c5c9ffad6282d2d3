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
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core import passwords
from ..core.addresses import AddressError, parse_mailbox
from ..core.errors import ConfigError
from .values import (  # noqa: F401  (HostPort, Rate, format_duration: re-exported for users)
    HostPort,
    Invalid,
    Rate,
    format_duration,
    split_list,
    to_algorithms,
    to_choice,
    to_command,
    to_delay,
    to_delimiter,
    to_duration,
    to_duration_list,
    to_host_port,
    to_hostname,
    to_http_url,
    to_int,
    to_listen_list,
    to_nameservers,
    to_networks,
    to_optional_hostname,
    to_optional_service,
    to_rate,
    to_score,
    to_selector,
    to_size,
    to_socket_or_service,
    to_switch,
    to_text,
    to_zone_list,
)

ALL_MAILBOXES = "*"
MAILBOX_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")

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
    imap: tuple[HostPort, ...]
    imaps: tuple[HostPort, ...]

    def listeners(self) -> list[tuple[str, HostPort]]:
        """(kind, address) of every configured listener, in a stable order."""
        return [(kind, address) for kind in LISTENER_KINDS for address in getattr(self, kind)]


LISTENER_KINDS = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
IMPLICIT_TLS_KINDS = ("submissions", "pop3s", "imaps")


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
class ChecksSection:
    """The screening of strangers (DESIGN 7.1); every check is off by default."""
    dnsbl: tuple[str, ...]               # blocklist zones, e.g. zen.spamhaus.org
    spf: str                             # off | tag | reject
    dmarc: str                           # off | tag | reject
    spamd: HostPort | None               # SpamAssassin's spamd
    spam_reject_score: float             # spamd score at or above: refused
    rspamd: str                          # base URL of rspamd's normal worker, or ""
    clamd: HostPort | Path | None        # a unix socket path, or host:port
    greylist: bool
    greylist_delay: float
    scanner_failure: str                 # tempfail | accept

    @property
    def any_scanner(self) -> bool:
        return bool(self.spamd or self.rspamd or self.clamd)


@dataclass(frozen=True)
class DkimSection:
    """Signing the household's own mail (DESIGN 7.2). Keys live in
    <data_dir>/dkim/<domain>/<selector>.key; a domain without one is not signed."""
    selector: str
    algorithms: tuple[str, ...]          # ("rsa",), ("ed25519",) or both

    def selectors(self) -> dict[str, str]:
        """algorithm -> selector: with both algorithms, <selector>-rsa and <selector>-ed25519."""
        if len(self.algorithms) == 1:
            return {self.algorithms[0]: self.selector}
        return {algorithm: f"{self.selector}-{algorithm}" for algorithm in self.algorithms}


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
    srs_secret: str                      # set: forwards leave with an SRS0 sender


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
    "checks": (ChecksSection, (
        Key("dnsbl", to_zone_list, ""),
        Key("spf", to_choice("off", "tag", "reject"), "off"),
        Key("dmarc", to_choice("off", "tag", "reject"), "off"),
        Key("spamd", to_optional_service(783), ""),
        Key("spam_reject_score", to_score, "10"),
        Key("rspamd", to_http_url, ""),
        Key("clamd", to_socket_or_service, ""),
        Key("greylist", to_switch, "off"),
        Key("greylist_delay", to_duration, "3m"),
        Key("scanner_failure", to_choice("tempfail", "accept"), "tempfail"),
    )),
    "dkim": (DkimSection, (
        Key("selector", to_selector, "mail"),
        Key("algorithms", to_algorithms, "rsa"),
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
        Key("srs_secret", to_text, ""),
    )),
}
VIA_SMARTHOST = "smarthost"          # a [routes] value: that destination via [relay] smarthost
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
    checks: ChecksSection
    dkim: DkimSection
    relay: RelaySection
    routes: Mapping[str, HostPort | str]             # host:port, or VIA_SMARTHOST
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
        limits=values["limits"], policy=values["policy"],
        checks=_finish_checks(values["checks"], base), dkim=values["dkim"], relay=relay,
        routes=_routes(parser, relay), domains=domains, mailboxes=mailboxes,
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


def _finish_checks(checks: ChecksSection, base: Path) -> ChecksSection:
    if isinstance(checks.clamd, Path):
        return replace(checks, clamd=(base / checks.clamd).resolve())
    return checks


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
    if relay.srs_secret and len(relay.srs_secret) < 16:
        raise ConfigError("relay", "srs_secret", "too short to be a secret: use 16 characters "
                          "or more (e.g. from: openssl rand -hex 16)")
    return replace(relay, mode=mode, smarthost=smarthost, smarthost_tls=tls_mode,
                   smarthost_ca_file=ca_file)


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


def _routes(parser, relay: RelaySection) -> Mapping[str, HostPort | str]:
    routes: dict[str, HostPort | str] = {}
    for key, value in _map_items(parser, "routes"):
        domain = _domain_key("routes", key)
        if value.strip().lower() == VIA_SMARTHOST:
            # e.g. a provider that blocks home IP ranges, while the rest goes direct
            if relay.smarthost is None:
                raise ConfigError("routes", key, "= smarthost needs [relay] smarthost")
            routes[domain] = VIA_SMARTHOST
            continue
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
        served = split_list(value.lower())
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
        for target in split_list(value):
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
