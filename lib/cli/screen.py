"""`screen`: runs the screening of strangers' mail on one message, as `serve`
would for that client, and says what each check found and what the client
would hear: the screening counterpart of `route`, for "my mail was refused"."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..checks import greylist
from ..checks.filter import run_filter
from ..checks.screening import Screener
from ..checks.trust import is_trusted
from ..checks.verdict import NOT_RUN, CheckResult, Screened
from ..config.router import REJECTED, REMOTE
from ..core import replies, wire
from ..core.addresses import AddressError, parse_mailbox
from ..core.replies import Reply
from ..session.runtime import load_runtime
from .common import EXIT_OK, become_mail_user

DEFAULT_CLIENT = "192.0.2.1"        # TEST-NET-1 (RFC 5737): a stranger nobody lists


@dataclass(frozen=True)
class Line:
    check: str
    result: str
    reason: str


def cmd_screen(args) -> int:
    runtime = load_runtime(args.config)
    become_mail_user(runtime)                    # the greylist store stays the server's
    raw = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    converter = wire.LfConverter()
    message = converter.feed(raw) + converter.flush()
    recipients = args.to or [f"postmaster@{runtime.router.primary_domain}"]
    screened = Screened(client_ip=args.client, helo=args.helo, sender=args.sender,
                        recipients=tuple(recipients), msg_id="screen",
                        hostname=runtime.hostname)
    lines, reply = _screen(runtime, screened, message)
    if not lines:
        lines = [Line("checks", "none", "no check is configured in [checks]")]
    _print(lines, reply, args.json)
    return EXIT_OK


def _screen(runtime, screened: Screened, message: bytes) -> tuple[list[Line], Reply]:
    config = runtime.config
    if is_trusted(config, screened.client_ip):
        return [Line("checks", "skipped", f"{screened.client_ip} is in [policy] "
                                          "trusted_networks: recognised senders skip every "
                                          "check")], replies.ACCEPTED.fill(id="(screen)")
    lines: list[Line] = []
    for text in screened.recipients:
        refusal = _route(runtime, text)
        if refusal is not None:
            lines.append(Line("route", "refused", f"{text}: {refusal[1]}"))
            return lines, refusal[0]
    store = greylist.Greylist(config.server.data_dir, config.checks.greylist_delay)
    screener = Screener(config, store, record=False)
    try:
        refusal_reply = _before_data(screener, screened, lines)
        if refusal_reply is not None:
            lines += [Line(name, NOT_RUN, "an earlier check refused")
                      for name in _message_checks(screener)]
            return lines, refusal_reply
        return _after_data(runtime, screener, screened, message, lines)
    finally:
        store.close()


def _route(runtime, text: str) -> tuple[Reply, str] | None:
    """As RCPT TO would answer a stranger: no such user, or no relaying."""
    try:
        address = parse_mailbox(text, utf8=True)
    except AddressError as error:
        return replies.BAD_ADDRESS_SYNTAX.fill(detail=str(error)), f"not an address: {error}"
    resolution = runtime.router.resolve(address)
    if resolution.result == REJECTED:
        return replies.NO_SUCH_USER, resolution.reason
    if resolution.result == REMOTE:
        return replies.RELAY_DENIED, "a remote address, and strangers may not relay"
    return None


def _before_data(screener: Screener, screened: Screened, lines: list[Line]) -> Reply | None:
    """MAIL (SPF), then RCPT (the DNSBL once, greylisting per recipient), as serve runs them."""
    steps: list[tuple[str, Callable[[], CheckResult | None]]] = []
    if screener.checks.spf != "off":
        steps.append(("spf", lambda: screener.sender(screened)))
    if screener.checks.dnsbl:
        steps.append(("dnsbl", lambda: screener.client(screened.client_ip)))
    if screener.checks.greylist:
        for recipient in screened.recipients:
            steps.append(("greylist", partial(screener.recipient, screened, recipient)))
    for index, (_, run) in enumerate(steps):
        result = run()
        if result is None:
            continue
        lines.append(Line(result.check, result.result, result.reason))
        if result.reply is not None:
            lines += [Line(later, NOT_RUN, "an earlier check refused")
                      for later, _ in steps[index + 1:]]
            return result.reply
    return None


def _message_checks(screener: Screener) -> list[str]:
    c = screener.checks
    names = (["dkim", "dmarc"] if c.dmarc != "off" else []) + \
        [name for name, on in (("clamd", c.clamd), ("spamd", c.spamd), ("rspamd", c.rspamd))
         if on]
    return names + (["filter"] if screener.config.policy.filter_command else [])


def _after_data(runtime, screener: Screener, screened: Screened, message: bytes,
                lines: list[Line]) -> tuple[list[Line], Reply]:
    config = runtime.config
    received = (f"Received: from {screened.helo} ([{screened.client_ip}])\n"
                f"\tby {runtime.hostname} (mailbox_appliance screen)\n").encode()
    with tempfile.NamedTemporaryFile(prefix="screen-", suffix=".eml") as file:
        file.write(received + screener.clean_head(message, runtime.hostname))
        file.flush()
        path = Path(file.name)
        outcome = screener.message(path, message, screened) if screener.active else None
        results: list[CheckResult] = outcome.results if outcome else []
        lines += [Line(r.check, r.result, r.reason) for r in results]
        if outcome is not None and outcome.reply is not None:
            if config.policy.filter_command:
                lines.append(Line("filter", NOT_RUN, "an earlier check refused"))
            return lines, outcome.reply
        if config.policy.filter_command:
            verdict = run_filter(config, path, {
                "MAILBOX_APPLIANCE_SENDER": screened.sender,
                "MAILBOX_APPLIANCE_RECIPIENTS": " ".join(screened.recipients),
                "MAILBOX_APPLIANCE_CLIENT": screened.client_ip})
            lines.append(Line("filter", "refused" if verdict.reply else "accept",
                              verdict.detail))
            if verdict.reply is not None:
                return lines, verdict.reply
    accepted = replies.ACCEPTED.fill(id="(screen)")
    if outcome is not None and outcome.junk:
        lines.append(Line("delivery", "junk", "tagged as spam: it would go to the Junk "
                                              "folder of each mailbox"))
    return lines, accepted


def _print(lines: list[Line], reply: Reply, as_json: bool) -> None:
    if as_json:
        for line in lines:
            print(json.dumps({"check": line.check, "result": line.result,
                              "reason": line.reason}, ensure_ascii=False))
        print(json.dumps({"reply": str(reply).strip(), "code": reply.code}))
        return
    width = max([len(line.check) for line in lines] + [6])
    for line in lines:
        print(f"{line.check:<{width}}  {line.result:<10}  {line.reason}")
    print(f"{'reply':<{width}}  {str(reply).strip()}")


def add_parser(commands, common) -> None:
    screen = commands.add_parser(
        "screen", parents=[common],
        help="run the spam and virus checks on one message, as serve would for that client")
    screen.add_argument("--client", default=DEFAULT_CLIENT, metavar="IP",
                        help=f"the client's address (default {DEFAULT_CLIENT})")
    screen.add_argument("--helo", default="client.example", metavar="NAME")
    screen.add_argument("--from", dest="sender", default="", metavar="ADDRESS",
                        help="the envelope sender (default: the null sender <>)")
    screen.add_argument("--to", action="append", metavar="ADDRESS",
                        help="a recipient (repeatable; default postmaster@ the first domain)")
    screen.add_argument("--json", action="store_true", help="one JSON object per line")
    screen.add_argument("file", nargs="?", metavar="FILE", help="the message (default: stdin)")
    screen.set_defaults(run=cmd_screen)
