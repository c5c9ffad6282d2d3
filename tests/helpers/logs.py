"""The server's log read back: key=value lines parsed into dicts, and the log
once its writer thread has caught up."""

from __future__ import annotations

import re
import time
from typing import Protocol

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


class HasLog(Protocol):
    def log_text(self) -> str: ...


def parse_log_line(line: str) -> dict[str, str]:
    """The key=value fields of one line, quoted values unquoted."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)),
                           value[1:-1])
        fields.setdefault(key, value)
    return fields


def log_events(text: str, event: str | None = None, **match: str) -> list[dict[str, str]]:
    """The lines of `text` as dicts of fields: those of `event` (any when None)
    with every field in `match`."""
    found = []
    for line in text.splitlines():
        fields = parse_log_line(line)
        if event is not None and fields.get("event") != event:
            continue
        if all(fields.get(k) == v for k, v in match.items()):
            found.append(fields)
    return found


def events(server: HasLog, event: str | None = None, **match: str) -> list[dict[str, str]]:
    """log_events() of the server's log as it is now (cheap enough to poll)."""
    return log_events(server.log_text(), event, **match)


def settled_log(server: HasLog, quiet: float = 0.3, limit: float = 10.0) -> str:
    """The log once the server's writer thread (50 ms batches) has added nothing
    for `quiet` seconds. Best effort, not a wait: after `limit` seconds the log
    is returned as it is, since a busy server may never fall quiet."""
    deadline = time.monotonic() + limit
    last, since = server.log_text(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        text = server.log_text()
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def settled_events(server: HasLog, event: str | None = None,
                   **match: str) -> list[dict[str, str]]:
    """log_events() of the settled log: every line the server has written so far."""
    return log_events(settled_log(server), event, **match)
