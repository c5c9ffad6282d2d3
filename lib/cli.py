"""The command line: argument parsing, the subcommands, exit codes, one-line errors.

Exit codes (DESIGN 4): 0 ok, 2 bad usage or bad config, 1 anything else.
Errors are one line on stderr; a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from . import config as config_module
from . import passwords
from .addresses import AddressError, parse_mailbox
from .errors import ConfigError
from .router import Router
from .services import load_runtime

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CONFIG_ENV = "MAILBOX_APPLIANCE_CONFIG"


class UsageError(Exception):
    """Bad arguments or input: exit 2."""


def default_config_path(script_dir: Path) -> Path:
    return Path(os.environ.get(CONFIG_ENV) or script_dir / "conf" / "mailbox_appliance.ini")


def load_router(path: Path) -> Router:
    """The config at `path`, validated as a whole (syntax, types, alias graph, TLS files)."""
    return load_runtime(path).router


# ---------------------------------------------------------------- commands

def cmd_check(args) -> int:
    router = load_router(args.config)
    for line in summary(router.config):
        print(line)
    return EXIT_OK


def cmd_serve(args) -> int:
    from .daemon import StartError, serve     # only `serve` needs the socket code
    runtime = load_runtime(args.config)
    try:
        return serve(Path(args.config), runtime)
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
    if cfg.routes:
        lines.append("routes:     " + "; ".join(f"{d} -> {hp}" for d, hp in cfg.routes.items()))
    return lines


def cmd_route(args) -> int:
    router = load_router(args.config)
    for text in args.addresses:
        try:
            resolution = router.resolve(parse_mailbox(text.strip(), utf8=True))
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
                        help="the INI file (default: $%s, else conf/mailbox_appliance.ini "
                             "next to the script)" % CONFIG_ENV)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="mailbox_appliance.py", parents=[common],
        description="A mail server for a small home server: SMTP in, Maildirs, POP3, relay out.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", parents=[common],
                                help="run every listener in the foreground until SIGTERM")
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
    return parser


def main(argv: list[str], script_dir: Path) -> int:
    parser = build_parser(script_dir)
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None) or default_config_path(script_dir)
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except ConfigError as error:
        _report(error.one_line(), debug)
        return EXIT_USAGE
    except UsageError as error:
        _report(str(error), debug)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as error:     # the last line of defence: one line, no traceback
        _report(f"error: {type(error).__name__}: {error}", debug)
        return EXIT_FAILURE


def _report(message: str, debug: bool) -> None:
    if debug:
        import traceback
        traceback.print_exc()
    print(message, file=sys.stderr)
