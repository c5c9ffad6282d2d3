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
import time
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
    from .advice import warnings
    router = load_router(args.config)
    for line in summary(router.config):
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
    print(f"wrote {cert} and {key} (self-signed for {hostname}, {args.days} days)")
    print("put this in your INI file, then run check and reload:")
    print(f"[tls]\ncert = {cert}\nkey = {key}")
    return EXIT_OK


def cmd_serve(args) -> int:
    from .daemon import StartError, serve     # only `serve` needs the socket code
    runtime = load_runtime(args.config)
    try:
        return serve(Path(args.config), runtime, args.pid_file)
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


def _become_mail_user(runtime) -> None:
    """Run by root: act as [server] user, so the files made stay the daemon's."""
    from .daemon import drop_privileges
    if os.geteuid() == 0:
        drop_privileges(runtime.config)


def _open_spool(runtime):
    from .spool import Spool
    _become_mail_user(runtime)
    return Spool(runtime.config.server.data_dir / "queue")


def cmd_queue(args) -> int:
    runtime = load_runtime(args.config)
    spool = _open_spool(runtime)
    if args.action == "list":
        return _queue_list(spool, args.json)
    if args.action == "flush":
        return _queue_flush(spool)
    if not args.id:
        raise UsageError("queue remove: which entry? (see: queue list)")
    return _queue_remove(spool, args.id)


def _queue_list(spool, as_json: bool) -> int:
    now = time.time()
    entries = spool.entries()
    for envelope in entries:
        if as_json:
            print(json.dumps({"id": envelope.id, "age": round(now - envelope.created),
                              "sender": envelope.sender,
                              "created": envelope.created,
                              "recipients": [vars(r) for r in envelope.recipients]},
                             ensure_ascii=False))
            continue
        age = _human(now - envelope.created)
        print(f"{envelope.id}  age {age}  from <{envelope.sender}>")
        for r in envelope.recipients:
            when = ""
            if r.state == "pending":
                wait = r.next_attempt - now
                when = "  next try now" if wait <= 0 else f"  next try in {_human(wait)}"
            print(f"    {r.address}  {r.state}  attempts {r.attempts}{when}")
            if r.last_reply:
                relay = f" ({r.relay})" if r.relay and r.relay != "none" else ""
                print(f"        last: {r.last_reply}{relay}")
    if not as_json:
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in the queue")
    return EXIT_OK


def _human(seconds: float) -> str:
    """3599 -> '59m59s', 90000 -> '1d1h': the two largest units."""
    seconds = max(1, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def _queue_flush(spool) -> int:
    from .spool import QueueBusy
    flushed = busy = 0
    for queue_id in spool.ids():
        try:
            with spool.locked(queue_id):
                envelope = spool.load(queue_id)
                for recipient in envelope.pending:
                    recipient.next_attempt = 0.0
                spool.save(envelope)
                flushed += 1
        except QueueBusy:
            busy += 1                       # being delivered right now anyway
        except FileNotFoundError:
            continue
    spool.poke()
    print(f"flushed {flushed} entr{'y' if flushed == 1 else 'ies'}"
          + (f"; {busy} being delivered now" if busy else ""))
    return EXIT_OK


def _queue_remove(spool, queue_id: str) -> int:
    from .spool import QueueBusy, check_id
    try:
        check_id(queue_id)
    except ValueError as error:
        raise UsageError(f"queue remove: {error}") from None
    deadline = time.monotonic() + 60
    while True:
        try:
            with spool.locked(queue_id):
                spool.remove(queue_id)
            print(f"removed {queue_id}")
            return EXIT_OK
        except FileNotFoundError:
            print(f"queue remove: no entry {queue_id} (see: queue list)", file=sys.stderr)
            return EXIT_FAILURE
        except QueueBusy:
            if time.monotonic() > deadline:
                print(f"queue remove: {queue_id} is still being delivered; try again",
                      file=sys.stderr)
                return EXIT_FAILURE
            time.sleep(0.5)


def cmd_sendmail(args) -> int:
    from .submit import SubmitError, prepare, submit
    options = _sendmail_options(args.args)
    if not options["recipients"] and not options["from_header"]:
        raise UsageError("sendmail: no recipients (give addresses, or -t to read them "
                         "from the header)")
    runtime = load_runtime(args.config)
    origin = f"uid {os.getuid()}"             # who ran it, before acting as the mail user
    raw = sys.stdin.buffer.read(runtime.config.limits.max_message_size + 1)
    if len(raw) > runtime.config.limits.max_message_size:
        print("sendmail: message larger than [limits] max_message_size", file=sys.stderr)
        return EXIT_FAILURE
    if options["dot_ends"]:
        raw = _cut_at_dot(raw)
    try:
        prepared = prepare(raw, runtime.hostname, options["sender"], options["recipients"],
                           options["from_header"], options["full_name"],
                           runtime.router.primary_domain)
        if os.geteuid() == 0 or _queue_writable(runtime):
            from .services import Services
            _become_mail_user(runtime)
            accepted = submit(runtime, Services.create(runtime.config), prepared, origin).id
        else:
            accepted = _submit_over_smtp(runtime, prepared)
    except SubmitError as error:
        print(f"sendmail: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if options["verbose"]:
        print(f"sendmail: accepted by {accepted}")
    return EXIT_OK


def _sendmail_options(args: list[str]) -> dict:
    """The sendmail(8) options cron, mailx and scripts use; others are refused."""
    options = {"sender": None, "full_name": None, "from_header": False, "dot_ends": True,
               "verbose": False, "recipients": []}
    items = list(args)
    while items:
        arg = items.pop(0)
        if arg == "--":
            options["recipients"] += items
            break
        if not arg.startswith("-") or arg == "-":
            options["recipients"].append(arg)
            continue
        flag, value = arg[:2], arg[2:]
        if flag in ("-f", "-F", "-r"):
            if not value:
                if not items:
                    raise UsageError(f"sendmail: {flag} needs a value")
                value = items.pop(0)
            options["full_name" if flag == "-F" else "sender"] = value
        elif arg == "-t":
            options["from_header"] = True
        elif arg in ("-i", "-oi"):
            options["dot_ends"] = False
        elif arg == "-v":
            options["verbose"] = True
        elif flag in ("-o", "-B") or arg in ("-odi", "-odb", "-odq", "-em", "-n"):
            continue                          # delivery modes and encodings: nothing to do
        else:
            raise UsageError(f"sendmail: unknown option {arg}")
    if options["sender"] == "<>":
        options["sender"] = ""
    return options


def _cut_at_dot(raw: bytes) -> bytes:
    """Without -i, a line with a single '.' ends the message (sendmail tradition)."""
    for marker in (b"\n.\n", b"\n.\r\n"):
        end = raw.find(marker)
        if end >= 0:
            return raw[:end + 1]
    if raw.startswith((b".\n", b".\r\n")):
        return b""
    return raw


def _queue_writable(runtime) -> bool:
    """May this user write the queue (or create it)? os.access answers False, not
    an error, for a folder it cannot even look into."""
    data_dir = runtime.config.server.data_dir
    queue = data_dir / "queue"
    if os.access(queue, os.W_OK | os.X_OK):
        return True
    return not os.path.isdir(queue) and os.access(data_dir, os.W_OK | os.X_OK)


def _submit_over_smtp(runtime, prepared) -> str:
    """A user who may not write the queue hands the message to the running
    server's smtp listener on this machine instead."""
    import smtplib
    from .submit import SubmitError
    listeners = runtime.config.listen.smtp
    if not listeners:
        raise SubmitError("cannot write the queue and no [listen] smtp to hand the message to")
    address = listeners[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    try:
        with smtplib.SMTP(host, address.port, timeout=60) as client:
            client.sendmail(str(prepared.sender) if prepared.sender else "",
                            [str(r) for r in prepared.recipients],
                            prepared.message.replace(b"\n", b"\r\n"))
    except (OSError, smtplib.SMTPException) as error:
        raise SubmitError(f"cannot write the queue, and the server at {host}:{address.port} "
                          f"did not take the message: {error}") from None
    return f"the server at {host}:{address.port}"


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
