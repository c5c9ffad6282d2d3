"""The test password and the one INI builder that every test writes its config with."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from lib.core import passwords

PASSWORD = "correct horse"
HASH = passwords.hash_password(PASSWORD)   # computed once: scrypt is slow on purpose

HOSTNAME = "mail.example.org"
# The address map most tests share; section bodies may say {hash} for HASH.
DOMAINS = "example.org = *\nexample.net = *\n"
MAILBOXES = "bhayden = {hash}\nalice = {hash}\n"
ALIASES = "postmaster = bhayden\nroot = bhayden\n"   # check warns when root reaches no mailbox
# What the server tests add to it: an alias for two mailboxes and a catch-all.
SERVER_ALIASES = ALIASES + "sales@example.net = alice, bhayden\n@example.net = bhayden\n"

Body = str | Mapping[str, object]


def ini(text: str) -> str:
    """Dedent an INI snippet and put the test hash in place of {hash}."""
    return textwrap.dedent(text).replace("{hash}", HASH)


def config_text(*, hostname: str = HOSTNAME, data_dir: str | Path = "data",
                log: str | Path = "stderr", log_level: str | None = None, server: Body = "",
                listen: Body | None = None, tls: tuple[Path, Path] | Body | None = None,
                plaintext_auth: str | None = None, limits: Body = "",
                trusted: str | None = None, policy: Body = "", relay: Body = "",
                domains: Body = DOMAINS, mailboxes: Body = MAILBOXES, aliases: Body = ALIASES,
                extra: str = "") -> str:
    """A whole config, sections in the order the README shows them.

    [server] always has hostname, data_dir and log (`server` adds keys); the other
    sections appear only when given. A section is given as its body (text, or a
    mapping of keys to values); `tls` may also be the (cert, key) pair, `trusted` is
    [policy] trusted_networks. [aliases] comes last among the sections, so lines
    appended to the result are aliases; `extra` is raw text added after it."""
    server_keys = {"hostname": hostname, "data_dir": data_dir, "log": log,
                   "log_level": log_level}
    if isinstance(tls, tuple):
        tls = {"cert": tls[0], "key": tls[1]}
    sections = {
        "server": _body(server_keys) + _body(server),
        "listen": None if listen is None else _body(listen),
        "tls": _optional(_body(tls or "") + _body({"plaintext_auth": plaintext_auth})),
        "limits": _optional(_body(limits)),
        "policy": _optional(_body({"trusted_networks": trusted}) + _body(policy)),
        "relay": _optional(_body(relay)),
        "domains": _body(domains),
        "mailboxes": _body(mailboxes),
        "aliases": _body(aliases),
    }
    text = "\n".join(f"[{name}]\n{body}" for name, body in sections.items() if body is not None)
    return ini(text) + ini(extra)


def _body(value: Body) -> str:
    """Section lines from text (dedented, ending in a newline) or from a mapping
    (`key = value` per key whose value is not None)."""
    if isinstance(value, Mapping):
        return "".join(f"{key} = {item}\n" for key, item in value.items() if item is not None)
    text = textwrap.dedent(value)
    return text if not text or text.endswith("\n") else text + "\n"


def _optional(body: str) -> str | None:
    return body or None


# The config of the unit tests: the shared address map and nothing else.
BASE_INI = config_text()
