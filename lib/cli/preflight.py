"""Operational warnings for `check`: what a home admin commonly gets wrong that
is not an error in the INI file itself (permissions, certificates, clear-text
passwords, folders the mail user cannot write)."""

from __future__ import annotations

import os
import pwd
import ssl
import stat
import time
from pathlib import Path

from ..checks.trust import is_loopback
from ..config.schema import Config

EXPIRY_WARNING_DAYS = 14


def warnings(config: Config) -> list[str]:
    found: list[str] = []
    found += _readable_secrets(config)
    found += _certificate(config)
    found += _clear_text_logins(config)
    found += _data_dir(config)
    found += _log_file(config)
    found += _dns_library(config)
    return found


def _readable_secrets(config: Config) -> list[str]:
    try:
        mode = config.path.stat().st_mode
    except OSError:
        return []
    secrets = []
    if config.mailboxes:
        secrets.append("password hashes")
    if config.relay.smarthost_password:
        secrets.append("the smarthost password")
    if secrets and mode & stat.S_IROTH:
        return [f"{config.path} is readable by every user (mode {stat.S_IMODE(mode):o}) "
                f"and holds {' and '.join(secrets)}: chmod 640 it (owner root, group of "
                f"[server] user)"]
    return []


def _certificate(config: Config) -> list[str]:
    if not config.tls.enabled:
        return []
    try:
        # CPython's own PEM reader, the standard library's only one; not in the type stubs
        details = ssl._ssl._test_decode_cert(str(config.tls.cert))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, AttributeError):
        return []                 # load_runtime already refused what cannot be loaded
    found = []
    not_after = ssl.cert_time_to_seconds(details["notAfter"])
    days = (not_after - time.time()) / 86400
    if days < 0:
        found.append(f"[tls] cert: the certificate expired on {details['notAfter']}: clients "
                     "will refuse it; renew it and reload")
    elif days < EXPIRY_WARNING_DAYS:
        found.append(f"[tls] cert: the certificate expires in {days:.0f} days "
                     f"({details['notAfter']})")
    names = [value for kind, value in details.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        names = [value for rdn in details.get("subject", ()) for key, value in rdn
                 if key == "commonName"]
    hostname = config.server.hostname
    if not any(_matches(hostname, name) for name in names):
        found.append(f"[tls] cert: the certificate is for {', '.join(names) or 'no name'}, "
                     f"not [server] hostname {hostname}: clients will warn or refuse")
    return found


def _matches(hostname: str, pattern: str) -> bool:
    """RFC 6125 6.4.3: a wildcard stands for exactly one left-most label."""
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return hostname.count(".") == pattern.count(".") and hostname.endswith(pattern[1:])
    return hostname == pattern


def _clear_text_logins(config: Config) -> list[str]:
    if config.tls.enabled:
        return []
    login_kinds = ("submission", "pop3") + (("smtp",) if config.tls.plaintext_auth == "always"
                                            else ())
    exposed = [f"{kind} {address}" for kind, address in config.listen.listeners()
               if kind in login_kinds and not is_loopback(address.host)]
    if not exposed:
        return []
    if config.tls.plaintext_auth == "always":
        return [f"no [tls] while {', '.join(exposed)} listen beyond this machine: "
                "passwords would cross the network in clear text"]
    return [f"no [tls] while {', '.join(exposed)} listen beyond this machine: clients "
            "there cannot log in (plaintext_auth allows clear text only on loopback); "
            "set [tls] cert and key (see: gencert)"]


def _data_dir(config: Config) -> list[str]:
    name = config.server.user
    if not name:
        return []
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return [f"[server] user: there is no user {name!r} on this machine; serve will refuse "
                "to start as root"]
    folder = config.server.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if _writable_by(folder, account):
        return []
    if folder == config.server.data_dir:
        return [f"[server] data_dir: {folder} is not writable by {name}; serve started as "
                f"root hands it over (chown -R), otherwise run: chown -R {name} {folder}"]
    return [f"[server] data_dir: {config.server.data_dir} does not exist and {folder} is not "
            f"writable by {name}; serve started as root creates it"]


def _log_file(config: Config) -> list[str]:
    """The log file is opened after the switch to [server] user."""
    name, target = config.server.user, config.server.log
    if not name or target in ("stderr", "syslog"):
        return []
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return []                          # _data_dir reports the missing user
    path = Path(target)
    writable = _writable_by(path, account) if path.exists() else \
        path.parent.is_dir() and _writable_by(path.parent, account)
    if writable:
        return []
    return [f"[server] log: {name} cannot write {target} (the server opens it after switching "
            f"to {name}); it would log to stderr instead. Use syslog, or a folder {name} owns"]


def _writable_by(folder: Path, account: pwd.struct_passwd) -> bool:
    info = folder.stat()
    mode = info.st_mode
    if account.pw_uid == 0:
        return True
    if info.st_uid == account.pw_uid:
        return bool(mode & stat.S_IWUSR)
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    if info.st_gid in groups:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def _dns_library(config: Config) -> list[str]:
    if config.relay.mode != "mx":
        return []
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        return ["[relay] mode = mx needs the dnspython package for MX look-ups: "
                "apt install python3-dnspython (or pip install dnspython)"]
    return []
