"""One SMTP mail transaction, MAIL FROM to the end of DATA, with the DATA
state it owns: the intake's half-written message, the DATA decoder and
whether the disk refused a write.

The session never clears a transaction field by field: it drops it whole
(RSET, EHLO/HELO, STARTTLS, the end of each message, an abort) and the next
MAIL makes a new one. `discard` is the one place where a message that was
begun and not committed is removed from disk.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field

from ..config.router import Resolution
from ..config.tls import TlsInfo
from ..core import wire
from ..core.addresses import Address
from ..store.intake import Accepted, Destinations, Incoming, Intake, path_text
from ..store.spool import new_id


@dataclass(eq=False)
class Transaction:
    sender: Address | None
    utf8: bool = False
    recipients: list[tuple[Address, Resolution]] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    # ---- DATA: from the 354 to the final reply
    incoming: Incoming | None = None      # the message file the intake is writing
    receiver: wire.DataReceiver = field(default_factory=wire.DataReceiver)
    write_error: OSError | None = None    # the disk refused part of the message: 451 at the end
    accepted: Accepted | None = None      # committed: nothing left to discard

    def begin_data(self, intake: Intake, header: bytes, origin: dict) -> None:
        """Open the message file (raises OSError when the disk cannot)."""
        destinations = Destinations.of([resolution for _, resolution in self.recipients])
        self.incoming = intake.begin(self.id, self.sender, destinations, header,
                                     utf8=self.utf8, origin=origin)

    @property
    def message(self) -> Incoming:
        if self.incoming is None:
            raise RuntimeError("no DATA in progress")
        return self.incoming

    def too_big(self, limit: int) -> bool:
        return self.receiver.size > limit

    def take(self, chunk: bytes, size_limit: int) -> OSError | None:
        """Decode DATA bytes and write the content they complete, unless the
        message is already refused (too big, an overlong line, a failed write:
        the rest is read and dropped, then refused once). Returns a write
        error the first time the disk refuses."""
        receiver = self.receiver
        content = receiver.feed(chunk)
        if not content or self.write_error is not None or receiver.overlong or \
                self.too_big(size_limit):
            return None
        try:
            self.message.write(content, receiver.lines)
        except OSError as error:          # disk full: read on to the end, then 451
            self.write_error = error
            return error
        return None

    def commit(self, junk: bool = False) -> Accepted:
        """The commit point (see store.intake): fsync'd everywhere, or an exception."""
        self.accepted = self.message.commit(junk=junk)
        return self.accepted

    def discard(self) -> bool:
        """Remove a message begun and not committed; True when there was one."""
        if self.incoming is None or self.accepted is not None:
            return False
        self.incoming.discard()
        return True

    def received_header(self, *, host: str, client_ip: str, helo: str, esmtp: bool,
                        tls: TlsInfo | None, user: str | None) -> bytes:
        """RFC 5321 4.4 trace line, with TLS and login facts (RFC 3848 / 6531
        keywords). Reads the clock for its date."""
        base = "UTF8SMTP" if self.utf8 else ("ESMTP" if esmtp else "SMTP")
        protocol = base + ("S" if tls and esmtp else "") + ("A" if user and esmtp else "")
        lines = [f"Received: from {helo} ([{client_ip}])"]
        if tls:
            lines.append(f"\t(using {tls.describe()})")
        lines.append(f"\tby {host} (mailbox_appliance) with {protocol} id {self.id}")
        date = email.utils.format_datetime(email.utils.localtime())
        if len(self.recipients) == 1:
            lines.append(f"\tfor {path_text(self.recipients[0][0])}; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\n".join(lines) + "\n").encode("utf-8")
