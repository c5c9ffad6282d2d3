"""What an outbound attempt yields for a recipient: a reply, or why no host could answer.

Decisions (delivered, retry, bounce) are made on these fields, never on text;
what people read (the log, `queue list`, a bounce) is rendered from them here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ..core.errors import DeliveryError
from ..store.spool import Recipient

# RFC 3463 2: class.subject.detail, the class repeating the reply's first digit
_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?=\s|$)")
TEXT_LIMIT = 900                 # characters of a reply kept: a DSN field must stay under 998


@dataclass(frozen=True)
class RemoteReply:
    """An SMTP reply of the next hop, or the one an RFC tells a client to
    make up in its stead when the answer is known without asking (RFC 7505's
    556 5.1.10 for a null MX, RFC 6531's 553 5.6.7, the SIZE a host declared)."""
    code: int                    # 250, 451, 550 ...; smtplib gives -1 for a garbled reply
    enhanced: str | None         # "5.1.1" (RFC 3463), when the reply carried one
    text: str                    # one line: the lines of a multi-line reply joined

    @classmethod
    def parse(cls, code: int, message: bytes | str) -> RemoteReply:
        """From what smtplib returns: the code, and the lines after it joined
        by newlines, each maybe starting with the same enhanced code."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        lines = [line.strip() for line in message.split("\n")]
        enhanced = None
        first = _ENHANCED.match(lines[0])
        if first and 200 <= code < 600 and first.group(1) == str(code)[0]:
            enhanced = first.group(0)
            # RFC 2034 4: every line of a multi-line reply repeats the code
            lines = [line[len(enhanced):] if line.startswith(enhanced) else line
                     for line in lines]
        text = " ".join(" ".join(lines).split())
        return cls(code, enhanced, text[:TEXT_LIMIT])

    @property
    def success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def transient(self) -> bool:
        """A 4xx, or a reply that makes no sense here: worth another try."""
        return not (self.success or self.permanent)

    def render(self) -> str:
        """The reply as the log, `queue list` and a DSN show it: `550 5.1.1 text`."""
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text) if part)

    def describe(self) -> str:
        return self.render()

    def diagnostic(self) -> str:
        """A DSN's Diagnostic-Code (RFC 3464 2.3.6): what the server said."""
        return f"smtp; {self.render()}"


class FailureKind(StrEnum):
    """Why no server's reply decided a recipient's fate."""
    DNS = "dns"                  # the next hop could not be looked up (for now)
    REFUSED = "refused"          # nothing listens there
    TIMEOUT = "timeout"          # no answer in time
    UNREACHABLE = "unreachable"  # no route, network down, and other socket errors
    TLS = "tls"                  # handshake or certificate not accepted
    REJECTED = "rejected"        # the host answered, but not with a session we can use
    DROPPED = "dropped"          # the connection went away in the middle
    LOCAL = "local"              # a problem on this server (see its log)


# what each kind counts as: all are transient, tried again until give_up_after
_CODES = {FailureKind.DROPPED: (451, "4.4.2"),      # RFC 3463 X.4.2: bad connection
          FailureKind.LOCAL: (451, "4.3.0")}        # X.3.0: other mail system status
_NO_ANSWER = (451, "4.4.1")                         # X.4.1: no answer from host


@dataclass(frozen=True)
class HostFailure:
    """No usable reply from any host: connection refused, timeout, TLS, DNS ..."""
    kind: FailureKind
    description: str             # plain words for the sender and the log, never an exception's name

    success = False
    permanent = False
    transient = True

    @property
    def code(self) -> int:
        return _CODES.get(self.kind, _NO_ANSWER)[0]

    @property
    def enhanced(self) -> str:
        return _CODES.get(self.kind, _NO_ANSWER)[1]

    def render(self) -> str:
        """For the log and `queue list`: `451 4.4.1 could not connect to ...`."""
        return f"{self.code} {self.enhanced} {self.description}"

    def describe(self) -> str:
        return self.description

    def diagnostic(self) -> str:
        """A DSN's Diagnostic-Code: no server spoke, so our own words (RFC 3464
        2.3.6 allows an X- type)."""
        return f"X-mailbox-appliance; {self.description}"


Result = RemoteReply | HostFailure


class AttemptFailed(DeliveryError):
    """A host, or every host of a domain, could not be used; `result` is what
    each recipient of the attempt gets."""

    def __init__(self, result: Result):
        super().__init__(result.render())
        self.result = result


def where(name: str, address: str) -> str:
    """A host as a bounce names it: `mx.remote.example [127.0.0.2]`."""
    return f"[{address}]" if name == address else f"{name} [{address}]"


# ---------------------------------------------------------------- in the queue envelope

def record(recipient: Recipient, result: Result) -> None:
    """Keep `result` in the recipient's queue fields."""
    recipient.reply_code = result.code
    recipient.reply_enhanced = result.enhanced
    if isinstance(result, RemoteReply):
        recipient.reply_text, recipient.failure = result.text, ""
    else:
        recipient.reply_text, recipient.failure = result.description, result.kind.value


def last_result(recipient: Recipient) -> Result | None:
    """The result `record` kept; None before the first attempt."""
    if recipient.failure:
        try:
            kind = FailureKind(recipient.failure)
        except ValueError:               # written by a newer version
            kind = FailureKind.LOCAL
        return HostFailure(kind, recipient.reply_text)
    if recipient.reply_code is None:
        return None
    return RemoteReply(recipient.reply_code, recipient.reply_enhanced, recipient.reply_text)
