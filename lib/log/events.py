"""Log lines: one event per line as key=value fields, tied together by an id.

    2026-11-29T15:30:00.123Z info comp=smtp session=3F2A9C event=rcpt to=<a@b> result=local

`comp` is the component (smtp, pop3, delivery, queue, daemon, listener); `session`
ties the lines of one connection together, `msg` those of one message across
SMTP, queue and delivery. Values with spaces, quotes or '=' are quoted, and
nothing a client sent reaches the log as a control character.
"""

from __future__ import annotations

import logging
import re
import time

LOGGER_NAME = "mailbox_appliance"


_NEEDS_QUOTES = re.compile(r'[^\x21-\x7e]|["=\\]')
# What a client can send that would act on a terminal or a log viewer instead of
# showing: C0 and C1 controls, DEL, and Unicode's invisible and direction-changing
# marks. Each is written as \xNN or \uNNNN (as Postfix's printable() guards its log).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_ESCAPED = re.compile(r'[\\"\x00-\x1f\x7f]')     # what an ASCII value needs escaped
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _quote(value) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    if text.isascii() and not _ESCAPED.search(text):
        return f'"{text}"'                   # spaces or '=' only: quoted as it is
    escaped = re.sub(r'[\\"\n\r\t]', lambda m: _SHORT_ESCAPES[m.group()], text)
    escaped = _UNPRINTABLE.sub(_escape, escaped)
    if not escaped.isascii():
        # Bytes a client sent that were not UTF-8 arrive as lone surrogates
        # (surrogateescape); they become \xNN, since the log file is UTF-8.
        escaped = escaped.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f'"{escaped}"'


def format_fields(fields: dict) -> str:
    """`key=value ...` for every field that is not None, in the given order."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        parts.append(f"{key}={_quote(value)}")
    return " ".join(parts)


class EventLog:
    """Writes events for one component and context (session or message id)."""

    def __init__(self, component: str, logger: logging.Logger | None = None, **context):
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._set_context({"comp": component, **context})

    def _set_context(self, context: dict) -> None:
        self._context = context
        # The context's part of every line, formatted once: a session logs
        # dozens of lines with the same comp= and session=.
        self._prefix = format_fields(context)
        self._taken = frozenset(context) | {"event"}

    def bind(self, **more) -> EventLog:
        """The same log with more context fields (e.g. a message id)."""
        bound = EventLog.__new__(EventLog)
        bound._logger = self._logger
        bound._set_context({**self._context, **more})
        return bound

    def _emit(self, level: int, event: str, fields: dict) -> None:
        if not self._logger.isEnabledFor(level):
            return
        if self._taken.isdisjoint(fields):       # the prefix always holds comp=
            line = f"{self._prefix} event={_quote(event)}"
            rest = format_fields(fields)
            if rest:
                line = f"{line} {rest}"
        else:                                    # a field given again replaces the context's
            line = format_fields({**self._context, "event": event, **fields})
        self._logger.log(level, line)

    def debug(self, event: str, **fields) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields) -> None:
        """An unexpected error: the event line, then the traceback."""
        self._logger.error(format_fields({**self._context, "event": event, **fields}),
                           exc_info=True)

    @property
    def debugging(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


class LineFormatter(logging.Formatter):
    """`<UTC timestamp> <level> <fields>`; the timestamp is left out for syslog."""

    def __init__(self, with_time: bool = True):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()} {record.getMessage()}"
        if self.with_time:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            text = f"{stamp}.{int(record.msecs):03d}Z {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text
