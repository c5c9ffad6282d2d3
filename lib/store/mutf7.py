"""Modified UTF-7 (RFC 3501 5.1.3): IMAP4rev1's encoding of folder names, also
used for the folder directories on disk (as Dovecot does), so any Unicode name
becomes printable ASCII.

Printable ASCII stands for itself except "&", which is written "&-"; every
other run of characters is UTF-16BE in base64 (with "," for "/", no padding)
between "&" and "-".
"""

from __future__ import annotations

import base64
import binascii


class Mutf7Error(ValueError):
    """Not valid modified UTF-7."""


def _direct(char: str) -> bool:
    return "\x20" <= char <= "\x7e"


def encode(name: str) -> str:
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if _direct(char):
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def decode(text: str) -> str:
    """The name `text` encodes; Mutf7Error for anything RFC 3501 does not allow."""
    out: list[str] = []
    at = 0
    while at < len(text):
        char = text[at]
        if char != "&":
            if not _direct(char):
                raise Mutf7Error(f"{char!r} must be encoded")
            out.append(char)
            at += 1
            continue
        end = text.find("-", at + 1)
        if end < 0:
            raise Mutf7Error("unterminated &")
        chunk = text[at + 1:end]
        at = end + 1
        if not chunk:
            out.append("&")
            continue
        try:
            raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4),
                                   validate=True)
            decoded = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Mutf7Error(f"bad base64 run {chunk!r}") from None
        if len(raw) % 2 or any(_direct(c) for c in decoded):
            raise Mutf7Error("printable ASCII must not be encoded")
        out.append(decoded)
    return "".join(out)
