"""What the IMAP unit tests share: a real config and Maildir in tmp_path, and a
client that feeds the engine lines and literals as the socket handler would
and reads back what it sends, as text."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lib.config.tls import TlsInfo
from lib.imap.session import ImapSession
from lib.log.events import EventLog, LineFormatter
from lib.session.engine import Action, ClientInfo, Step
from lib.session.runtime import Runtime, Services, load_runtime
from lib.store.folders import MailStore

from ..helpers.ini import BASE_INI, PASSWORD, ini

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
PLAIN_MESSAGE = b"From: Ann <ann@example.net>\nTo: alice@example.org\nSubject: hello\n" \
                b"Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <1@example.net>\n\n" \
                b"Hello Alice,\nhow are you?\n"


class Recorder(logging.Handler):
    """Keeps every log line, formatted as the server writes them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(LineFormatter(with_time=False))
        self.lines: list[str] = []
        self.logger = logging.Logger("imap-under-test", logging.DEBUG)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def events(self, event: str) -> list[str]:
        return [line for line in self.lines if f" event={event} " in line + " "]


@dataclass
class Env:
    runtime: Runtime
    services: Services
    root: Path
    recorder: Recorder

    def deliver(self, data: bytes = PLAIN_MESSAGE, mailbox: str = "alice") -> str:
        return self.services.store.deliver([mailbox], data)[mailbox]

    def maildir(self, mailbox: str = "alice") -> Path:
        return self.services.store.path(mailbox)

    @property
    def mailstore(self) -> MailStore:
        return MailStore.of(self.services.store)


def make_env(tmp_path: Path, certificate: tuple[Path, Path] | None = None,
             extra: str = "") -> Env:
    path = tmp_path / "imap.ini"
    tls = f"\n[tls]\ncert = {certificate[0]}\nkey = {certificate[1]}\n" if certificate else ""
    path.write_text(ini(BASE_INI) + tls + extra)
    runtime = load_runtime(path)
    services = Services.create(runtime.config)
    return Env(runtime, services, tmp_path, Recorder())


def text_of(step: Step) -> str:
    data = b"".join(reply.to_bytes() for reply in step.replies)
    if step.body is not None:
        data += b"".join(step.body)
    return data.decode("utf-8", "surrogateescape")


class Client:
    """One connection's engine and what it said."""

    def __init__(self, env: Env, ip: str = "192.0.2.9", tls: TlsInfo | None = TLS,
                 listener: str = "imap"):
        self.env = env
        self.session = ImapSession(env.runtime, env.services, ClientInfo(ip, 1, listener, tls),
                                   log=EventLog("imap", logger=env.recorder.logger))
        self.greeting = text_of(self.session.greeting())
        self.last: Step | None = None
        self._tags = 0

    def send(self, data: bytes | str) -> str:
        """Feed bytes as they would arrive (lines, and literal octets when the
        engine expects them); everything the engine sent back."""
        buf = data.encode() if isinstance(data, str) else data
        out = []
        while buf:
            if self.session.receiving_data:
                step = self.session.feed_data(buf)
                buf = step.leftover
            else:
                end = buf.find(b"\n")
                if end < 0:
                    raise AssertionError(f"unterminated line {buf!r}")
                line, buf = buf[:end + 1], buf[end + 1:]
                step = self.session.feed_line(line)
            self.last = step
            out.append(text_of(step))
        return "".join(out)

    def command(self, text: str, tag: str | None = None) -> str:
        """`<tag> text` and its whole answer; the answer must end with the tagged line."""
        if tag is None:
            self._tags += 1
            tag = f"t{self._tags}"
        answer = self.send(f"{tag} {text}\r\n")
        assert re.search(rf"(^|\r\n){re.escape(tag)} (OK|NO|BAD) [^\r\n]*\r\n\Z", answer), answer
        return answer

    def ok(self, text: str) -> str:
        answer = self.command(text)
        assert tagged(answer).split(" ")[1] == "OK", answer
        return answer

    def login(self, user: str = "alice") -> Client:
        self.ok(f'LOGIN {user} "{PASSWORD}"')
        return self

    @property
    def closed(self) -> bool:
        return self.last is not None and self.last.action is Action.CLOSE


def tagged(answer: str) -> str:
    """The last line of an answer (the tagged completion)."""
    return answer.rstrip("\r\n").rsplit("\r\n", 1)[-1]


def untagged(answer: str) -> list[str]:
    return [line for line in answer.split("\r\n") if line.startswith("* ")]
