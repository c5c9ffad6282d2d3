"""Typed exceptions: raised deep in the code, turned into replies in one place."""

from __future__ import annotations


class MailError(Exception):
    """Base of every error the server expects and knows how to answer."""


class Reject(MailError):
    """The client gets `reply` (a 4xx or 5xx); `reason` is what the log says."""

    def __init__(self, reply, reason: str | None = None):
        super().__init__(reason or reply.text)
        self.reply = reply
        self.reason = reason or reply.text


class DeliveryError(MailError):
    """An outbound attempt failed."""


class ConfigError(MailError):
    """The INI file is wrong. The message always names the section and key."""

    def __init__(self, section: str | None, key: str | None, message: str,
                 *, path: str | None = None, line: int | None = None):
        self.section = section
        self.key = key
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path:
            where = self.path + (f" line {self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        if self.section and self.key:
            what = f"[{self.section}] {self.key}: "
        elif self.section:
            what = f"[{self.section}]: "
        else:
            what = ""
        return f"{where}{what}{self.message}"

    def located(self, path: str, line: int | None) -> ConfigError:
        """The same error, with the file and line filled in where still unknown."""
        return ConfigError(self.section, self.key, self.message,
                           path=self.path or path, line=self.line or line)
