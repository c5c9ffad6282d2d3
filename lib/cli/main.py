"""The command line: argument parsing, the subcommands, exit codes, one-line errors.

Exit codes (DESIGN 4): 0 ok, 2 bad usage or bad config, 1 anything else.
Errors are one line on stderr; a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import json
import os
import pwd
import sys
from pathlib import Path

from ..config import schema as config_module
from ..config.router import Router
from ..config.values import format_duration
from ..core import passwords
from ..core.addresses import AddressError, parse_mailbox
from ..core.errors import ConfigError
from ..session.runtime import load_runtime
from ..store import datadir
from . import screen
from .common import (
    CONFIG_ENV,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    SYSTEM_CONFIG,
    UsageError,
    find_config,
)
from .control import cmd_reload, cmd_status
from .dnsrecords import cmd_dns_records
from .keys import cmd_dkim_keygen
from .queue_commands import cmd_queue
from .sendmail import cmd_sendmail


def load_router(path: Path) -> Router:
    """The config at `path`, validated as a whole (syntax, types, alias graph, TLS files)."""
    return load_runtime(path).router


# ---------------------------------------------------------------- commands

def cmd_check(args) -> int:
    from .preflight import read_only_data_dir, warnings
    router = load_router(args.config)
    config_module.require_listener(router.config)
    problem = datadir.refusal(router.config.server.data_dir) or \
        read_only_data_dir(router.config)
    if problem:
        raise router.config.error("server", "data_dir", problem)
    lines = summary(router.config)
    print(lines[0])
    print(f"config:     {args.config_choice.describe()}")
    for line in lines[1:]:
        print(line)
    for warning in warnings(router.config):
        print(f"warning: {warning}")
    return EXIT_OK


def cmd_gencert(args) -> int:
    """A self-signed certificate for [server] hostname, made with openssl."""
    import shutil
    import subprocess
    cfg = config_module.load(args.config, tls_files=False)   # the files may be what we make
    hostname = args.hostname or cfg.server.hostname
    folder = Path(args.out or Path(args.config).resolve().parent / "tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    if (cert.exists() or key.exists()) and not args.force:
        raise UsageError(f"gencert: {cert} or {key} exists already (--force replaces them)")
    if shutil.which("openssl") is None:
        print("gencert: the openssl command is missing: apt install openssl", file=sys.stderr)
        return EXIT_FAILURE
    folder.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)                 # the key is created unreadable to others
    try:
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-sha256",
             "-keyout", str(key), "-out", str(cert), "-days", str(args.days),
             "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}"],
            capture_output=True, text=True, timeout=120)
    finally:
        os.umask(old_umask)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        print(f"gencert: openssl failed: {said[-1] if said else 'exit ' + str(done.returncode)}",
              file=sys.stderr)
        return EXIT_FAILURE
    os.chmod(cert, 0o644)
    readable_by = _share_key_with_mail_user(key, cfg.server.user)
    print(f"wrote {cert} and {key} (self-signed for {hostname}, {args.days} days)"
          + (f"; the key is readable by group {readable_by}" if readable_by else ""))
    print("put this in your INI file, then run check and reload:")
    print(f"[tls]\ncert = {cert}\nkey = {key}")
    return EXIT_OK


def _share_key_with_mail_user(key: Path, user: str) -> str | None:
    """The server reads the key again as [server] user on every reload: made by
    root, it goes to root:<the user's group>, mode 0640. Returns that group."""
    if os.geteuid() != 0 or not user:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return None                                  # check reports the missing user
    os.chown(key, 0, account.pw_gid)
    os.chmod(key, 0o640)
    try:
        return grp.getgrgid(account.pw_gid).gr_name
    except KeyError:
        return str(account.pw_gid)


def cmd_serve(args) -> int:
    from ..server.daemon import StartError, serve  # only `serve` needs the socket code
    runtime = load_runtime(args.config)
    try:
        return serve(Path(args.config), runtime, args.pid_file,
                     config_source=args.config_choice.describe())
    except StartError as error:
        print(f"serve: {error}", file=sys.stderr)
        return EXIT_FAILURE


def summary(cfg: config_module.Config) -> list[str]:
    def served(value) -> str:
        return "every mailbox" if value == config_module.ALL_MAILBOXES else ", ".join(sorted(value))

    listeners = [f"{kind} {address}" for kind, address in cfg.listen.listeners()]
    relay = ("mx (straight to each domain's MX hosts)" if cfg.relay.mode == "mx"
             else f"smarthost {cfg.relay.smarthost} ({cfg.relay.smarthost_tls}"
                  f"{', login ' + cfg.relay.smarthost_user if cfg.relay.smarthost_user else ''})")
    lines = [
        f"{cfg.path}: OK",
        f"hostname:   {cfg.server.hostname}",
        f"data_dir:   {cfg.server.data_dir}",
        f"domains:    {len(cfg.domains)}",
        *(f"  {domain}: {served(value)}" for domain, value in cfg.domains.items()),
        f"mailboxes:  {len(cfg.mailboxes)}: {', '.join(cfg.mailboxes) or '-'}",
        f"aliases:    {len(cfg.aliases)}",
        *(f"  {key} -> {', '.join(targets)}" for key, targets in cfg.aliases.items()),
        f"listeners:  {'; '.join(listeners) or 'none'}",
        f"tls:        {cfg.tls.cert if cfg.tls.enabled else 'off'}",
        f"relay:      {relay}",
    ]
    c = cfg.checks
    screening = [f"dnsbl {', '.join(c.dnsbl)}" if c.dnsbl else "",
                 f"spf {c.spf}" if c.spf != "off" else "",
                 f"dmarc {c.dmarc}" if c.dmarc != "off" else "",
                 f"greylist {format_duration(c.greylist_delay)}" if c.greylist else "",
                 f"spamd {c.spamd}" if c.spamd else "", f"rspamd {c.rspamd}" if c.rspamd else "",
                 f"clamd {c.clamd}" if c.clamd else ""]
    lines.append("checks:     " + ("; ".join(s for s in screening if s) or
                                   "none (strangers' mail is not screened)"))
    if cfg.routes:
        lines.append("routes:     " + "; ".join(f"{d} -> {hp}" for d, hp in cfg.routes.items()))
    return lines


def cmd_route(args) -> int:
    router = load_router(args.config)
    for text in args.addresses:
        try:
            # a bare name ("root") is what cron and sendmail send: at the first local domain
            qualified = text.strip() if "@" in text else f"{text.strip()}@{router.primary_domain}"
            resolution = router.resolve(parse_mailbox(qualified, utf8=True))
        except AddressError as error:
            if args.json:
                print(json.dumps({"address": text, "result": "rejected", "mailboxes": [],
                                  "forward": [], "reason": f"not an address: {error}"}))
            else:
                print(f"{text} -> rejected: not an address: {error}")
            continue
        if args.json:
            print(json.dumps(resolution.as_json(text), ensure_ascii=False))
        else:
            print(f"{text} -> {resolution.result}: {resolution.reason}")
    return EXIT_OK


def cmd_passwd(args) -> int:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != first:
            print("passwd: the two passwords differ; nothing printed", file=sys.stderr)
            return EXIT_FAILURE
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise UsageError("passwd: empty password")
    print(passwords.hash_password(first))
    return EXIT_OK


# ---------------------------------------------------------------- parsing

def build_parser(script_dir: Path) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                        help=f"the INI file (default: ${CONFIG_ENV}, else {SYSTEM_CONFIG} "
                             "when it exists, else conf/mailbox_appliance.ini next to "
                             "the script)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="mailbox_appliance.py", parents=[common],
        description="A mail server for a small home server: SMTP in, Maildirs, POP3, relay out.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", parents=[common],
                                help="run every listener in the foreground until SIGTERM")
    serve.add_argument("--pid-file", type=Path, help="write the process id here "
                       "(overrides [server] pid_file; for SysV init scripts)")
    serve.set_defaults(run=cmd_serve)

    check = commands.add_parser("check", parents=[common], help="validate the INI file")
    check.set_defaults(run=cmd_check)

    route = commands.add_parser("route", parents=[common],
                                help="explain where addresses go and why")
    route.add_argument("addresses", nargs="+", metavar="ADDRESS")
    route.add_argument("--json", action="store_true", help="one JSON object per line")
    route.set_defaults(run=cmd_route)

    passwd = commands.add_parser("passwd", parents=[common],
                                 help="hash a password for [mailboxes]")
    passwd.set_defaults(run=cmd_passwd)

    gencert = commands.add_parser("gencert", parents=[common],
                                  help="make a self-signed TLS certificate for [server] hostname")
    gencert.add_argument("--out", help="folder for cert.pem and key.pem (default: tls/ "
                         "next to the INI file)")
    gencert.add_argument("--hostname", help="name in the certificate (default: [server] hostname)")
    gencert.add_argument("--days", type=int, default=825)
    gencert.add_argument("--force", action="store_true", help="replace existing files")
    gencert.set_defaults(run=cmd_gencert)

    keygen = commands.add_parser("dkim-keygen", parents=[common],
                                 help="make the missing DKIM keys and print their DNS records")
    keygen.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain")
    keygen.set_defaults(run=cmd_dkim_keygen)

    records = commands.add_parser("dns-records", parents=[common],
                                  help="the DNS records each domain should publish")
    records.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain")
    records.add_argument("--check", action="store_true", help="look each one up: ok, missing "
                         "or differs; exit 1 unless every one is ok")
    records.set_defaults(run=cmd_dns_records)

    reload = commands.add_parser(
        "reload", parents=[common],
        help="make the running server re-read the INI and print what it said")
    reload.set_defaults(run=cmd_reload)

    status = commands.add_parser("status", parents=[common],
                                 help="is the server running? (its pid; exit 3 when not)")
    status.set_defaults(run=cmd_status)

    screen.add_parser(commands, common)

    queue = commands.add_parser("queue", parents=[common], help="the outbound queue")
    queue.add_argument("action", choices=("list", "flush", "remove"))
    queue.add_argument("id", nargs="?", help="queue id (for remove)")
    queue.add_argument("--json", action="store_true", help="list: one JSON object per line")
    queue.set_defaults(run=cmd_queue)

    sendmail = commands.add_parser(
        "sendmail", help="queue a message read from stdin, like /usr/sbin/sendmail",
        usage="%(prog)s [-f SENDER] [-F NAME] [-t] [-i] RECIPIENT...")
    sendmail.set_defaults(args=[])
    sendmail.set_defaults(run=cmd_sendmail)
    return parser


def main(argv: list[str], script_dir: Path, program: str = "mailbox_appliance.py") -> int:
    if Path(program).name == "sendmail":      # installed as /usr/sbin/sendmail
        argv = ["sendmail", *argv]
    parser = build_parser(script_dir)
    argv, sendmail_args = _split_sendmail(argv)
    args = parser.parse_args(argv)
    if sendmail_args is not None:
        args.args = sendmail_args
    debug = getattr(args, "debug", False)
    try:
        args.config_choice = find_config(getattr(args, "config", None), script_dir)
        args.config = args.config_choice.path
        return args.run(args)
    except ConfigError as error:
        _report(error.one_line(), debug)
        return EXIT_USAGE
    except UsageError as error:
        _report(str(error), debug)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # `check | head -1`: the reader left; nothing more to say, and Python must
        # not complain when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as error:     # the last line of defence: one line, no traceback
        _report(f"error: {type(error).__name__}: {error}", debug)
        return EXIT_FAILURE


def _split_sendmail(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """sendmail's options (-i, -t, -FName ...) are its own: hand them over
    untouched instead of letting argparse read them as ours."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in ("-c", "--config"):
            index += 2
        elif word.startswith("-"):
            index += 1
        else:
            if word == "sendmail":
                return argv[:index + 1], argv[index + 1:]
            return argv, None
    return argv, None


def _report(message: str, debug: bool) -> None:
    if debug:
        import traceback
        traceback.print_exc()
    print(message, file=sys.stderr)
