"""Operational warnings for `check`: what a home admin commonly gets wrong that
is not an error in the INI file itself (permissions, certificates, clear-text
passwords, folders the mail user cannot write)."""

from __future__ import annotations

import grp
import os
import pwd
import ssl
import stat
import time
from pathlib import Path

from ..checks.trust import is_loopback
from ..config.router import LOCAL, Router
from ..config.schema import Config
from ..core.addresses import Address
from . import preflight_screening

EXPIRY_WARNING_DAYS = 14
SYSLOG_SOCKET = "/dev/log"


def warnings(config: Config) -> list[str]:
    found: list[str] = []
    found += _readable_secrets(config)
    found += _writable_config(config)
    found += _root_without_user(config)
    found += _certificate(config)
    found += _clear_text_logins(config)
    found += _data_dir(config)
    found += _log_file(config)
    found += _read_after_switch(config)
    found += _root_reaches_a_mailbox(config)
    found += _dns_library(config)
    found += _forwards_without_srs(config)
    found += preflight_screening.warnings(config)
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


def _writable_config(config: Config) -> list[str]:
    """Whoever may change the INI decides what root does at start (data_dir,
    user, pid_file) and which program runs on every message (filter_command)."""
    found = []
    for path, what in ((config.path, "the INI file"), (config.path.parent, "the INI's folder")):
        try:
            info = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not (path.is_dir() and mode & stat.S_ISVTX):
            who = "every user" if mode & stat.S_IWOTH else f"group {_group_name(info.st_gid)}"
            found.append(f"{what} {path} is writable by {who} (mode {mode:o}): whoever can "
                         f"change it controls the server; chmod go-w {path}")
    user = config.server.user
    if user:
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            return found
        if account.pw_uid != 0 and config.path.stat().st_uid == account.pw_uid:
            found.append(f"{config.path} belongs to [server] user {user}: a break-in as that "
                         "user could rewrite it (filter_command, data_dir) for the next "
                         f"start as root; chown root {config.path}")
    if config.tls.key:
        try:
            key_mode = stat.S_IMODE(config.tls.key.stat().st_mode)
        except OSError:
            key_mode = 0
        if key_mode & stat.S_IROTH:
            found.append(f"[tls] key: {config.tls.key} is readable by every user (mode "
                         f"{key_mode:o}): anyone on this machine could impersonate the "
                         f"server; chmod 640 {config.tls.key}")
    return found


def _root_without_user(config: Config) -> list[str]:
    if config.server.user == "root":
        return ["[server] user = root: serve refuses to run as root after the switch; "
                "set it to the mail user (e.g. user = mail)"]
    if os.geteuid() == 0 and not config.server.user:
        return ["[server] user is not set: started as root, serve would keep running as "
                "root; set it to the mail user (e.g. user = mail)"]
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
    login_kinds = ("submission", "pop3", "imap") + (
        ("smtp",) if config.tls.plaintext_auth == "always" else ())
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
    folder = _existing(config.server.data_dir)
    if _writable_by(folder, account):
        return []
    if folder == config.server.data_dir:
        return [f"[server] data_dir: {folder} is not writable by {name}; serve started as "
                f"root hands it over (chown), otherwise run: chown {name} {folder}"]
    return [f"[server] data_dir: {config.server.data_dir} does not exist and {folder} is not "
            f"writable by {name}; serve started as root creates it"]


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_only_data_dir(config: Config) -> str | None:
    """An error for check: the server could not keep a single message."""
    folder = _existing(config.server.data_dir)
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    if read_only:
        return (f"{folder} is on a read-only file system: the server could not store mail "
                "or its queue there")
    return None


def _log_file(config: Config) -> list[str]:
    """The log file is opened after the switch to [server] user."""
    name, target = config.server.user, config.server.log
    if target == "syslog":
        if not os.path.exists(SYSLOG_SOCKET):
            return [f"[server] log = syslog, but {SYSLOG_SOCKET} does not exist (no syslog "
                    "daemon runs here): the server would log to stderr instead. Install "
                    "rsyslog, or set log to a file"]
        return []
    if not name or target == "stderr":
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


def _read_after_switch(config: Config) -> list[str]:
    """Files the server reads again as [server] user on a reload: the INI and the
    TLS files. Root can read them all, so check asks as that user."""
    name = config.server.user
    if os.geteuid() != 0 or not name:
        return []
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return []                          # _data_dir reports the missing user
    wanted = [("the INI file", config.path)]
    if config.tls.cert and config.tls.key:
        wanted += [("[tls] cert", config.tls.cert), ("[tls] key", config.tls.key)]
    unreadable = _unreadable_as(account, [path for _, path in wanted])
    group = _group_name(account.pw_gid)
    return [f"{what}: {name} cannot read {path}, and the server reads it as {name} on every "
            f"reload (the reload would fail and keep the old config): chgrp {group} {path} "
            f"&& chmod g+r {path}"
            for what, path in wanted if path in unreadable]


def _unreadable_as(account: pwd.struct_passwd, paths: list[Path]) -> set[Path]:
    """Which of `paths` the user cannot open for reading: tried in a child process
    that really is that user (groups, traversal and ACLs all count)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: become the user, try, report
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            failed = []
            for index, path in enumerate(paths):
                try:
                    with open(path, "rb"):
                        pass
                except OSError:
                    failed.append(str(index))
            os.write(write_end, ",".join(failed).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        said = answer.read().decode()
    os.waitpid(pid, 0)
    return {paths[int(index)] for index in said.split(",") if index}


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _dns_library(config: Config) -> list[str]:
    if config.relay.mode != "mx":
        return []
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        return ["[relay] mode = mx needs the dnspython package for MX look-ups: "
                "apt install python3-dnspython (or pip install dnspython)"]
    return []


def _forwards_without_srs(config: Config) -> list[str]:
    """A forward keeps the original sender, whose SPF does not list this server:
    receivers that check SPF refuse or junk it unless it leaves with SRS."""
    if config.relay.srs_secret:
        return []
    forwards = sorted({f"{key} -> {target}" for key, targets in config.aliases.items()
                       for target in targets
                       if "@" in target and target.rpartition("@")[2].lower()
                       not in config.domains})
    if not forwards:
        return []
    shown = ", ".join(forwards[:3]) + (", ..." if len(forwards) > 3 else "")
    return [f"[aliases] forward to outside addresses ({shown}) but [relay] srs_secret is "
            "not set: the forwarded mail keeps its sender, whose SPF does not list this "
            "server, so receivers may refuse or junk it; set srs_secret to a random string "
            "(e.g. from: openssl rand -hex 16)"]


def _root_reaches_a_mailbox(config: Config) -> list[str]:
    """cron mails root; without an alias that mail is refused."""
    router = Router(config)
    resolution = router.resolve(Address("root", router.primary_domain))
    if resolution.result == LOCAL:
        return []
    return [f"root@{router.primary_domain} reaches no mailbox ({resolution.reason}): cron's "
            "and the system's mail to root would be refused. Add to [aliases]: "
            "root = <your mailbox> (and abuse, MAILER-DAEMON likewise)"]
