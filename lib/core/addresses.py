"""RFC 5321 paths and mailboxes: parsing, normalising and formatting addresses.

An `Address` keeps the local part literally (quotes and backslashes removed)
and the domain in lower case (IDNA A-labels for international domains), so
two spellings of one mailbox compare equal after `normalised()`. Nothing here
interprets `%`, `!` or a quoted `@` as routing: they are characters of a local
part. Source routes (`<@relay:user@host>`) are parsed and dropped, as RFC 5321
section 3.3 and appendix C tell a server to do.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass
from functools import cached_property

MAX_LOCAL_PART = 64      # RFC 5321 4.5.3.1.1, octets
MAX_DOMAIN = 255         # RFC 5321 4.5.3.1.2, octets
MAX_PATH = 256           # RFC 5321 4.5.3.1.3, octets including the angle brackets

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LET_DIG = frozenset(string.ascii_letters + string.digits)
_LDH = _LET_DIG | {"-"}


class AddressError(ValueError):
    """The text is not an RFC 5321 address; the message says why, for a 501 reply."""


@dataclass(frozen=True)
class Address:
    local: str    # the literal local part: quotes and escapes already removed
    domain: str   # lower case, A-labels; an address literal keeps its brackets

    def __str__(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        """The address as written in a path (computed once: logs and headers use it often)."""
        local = format_local_part(self.local)
        return f"{local}@{self.domain}" if self.domain else local

    def normalised(self) -> Address:
        """The same mailbox with a case-insensitive local part, for local lookups."""
        return Address(self.local.lower(), self.domain)

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()


def _is_atext(ch: str, utf8: bool) -> bool:
    return ch in _ATEXT or (utf8 and ord(ch) >= 0x80 and ch.isprintable())


def is_dot_string(text: str, utf8: bool = True) -> bool:
    """True when `text` can be written without quotes (RFC 5321 Dot-string)."""
    if not text:
        return False
    return all(atom and all(_is_atext(ch, utf8) for ch in atom) for atom in text.split("."))


def format_local_part(local: str) -> str:
    """The local part as written in a path: bare when it can be, quoted otherwise."""
    if is_dot_string(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _parse_quoted(text: str, start: int, utf8: bool) -> tuple[str, int]:
    """Parse a Quoted-string at text[start] == '"'; return (literal, index after)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if not (32 <= ord(nxt) <= 126 or (utf8 and ord(nxt) >= 0x80)):
                raise AddressError("invalid escaped character in quoted local part")
            out.append(nxt)
            i += 2
            continue
        code = ord(ch)
        # qtextSMTP: %d32-33 / %d35-91 / %d93-126, plus UTF-8 with SMTPUTF8 (RFC 6531)
        if not (code in (32, 33) or 35 <= code <= 91 or 93 <= code <= 126
                or (utf8 and code >= 0x80 and ch.isprintable())):
            raise AddressError("invalid character in quoted local part")
        out.append(ch)
        i += 1
    raise AddressError("unterminated quoted local part")


def _parse_local(text: str, utf8: bool) -> tuple[str, int]:
    """Parse the local part at the start of text; return (literal, index of '@')."""
    if text.startswith('"'):
        local, end = _parse_quoted(text, 0, utf8)
    else:
        end = text.find("@")
        if end < 0:
            raise AddressError("address has no @domain")
        local = text[:end]
        if not is_dot_string(local, utf8):
            if not utf8 and not local.isascii():
                raise AddressError("non-ASCII local part without SMTPUTF8")
            raise AddressError(f"invalid local part {local!r}")
    if end >= len(text) or text[end] != "@":
        raise AddressError("address has no @domain")
    if not local:
        raise AddressError("empty local part")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")
    return local, end


def parse_domain(text: str, *, utf8: bool = False, literal_ok: bool = True) -> str:
    """Validate and normalise a domain (or address literal); raise AddressError."""
    if not text:
        raise AddressError("empty domain")
    if text.startswith("["):
        if not literal_ok:
            raise AddressError("address literal not allowed here")
        return _parse_address_literal(text)
    if not text.isascii():
        if not utf8:
            raise AddressError("non-ASCII domain without SMTPUTF8")
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError(f"invalid international domain {text!r}") from None
    if len(text) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
    for label in text.split("."):
        if not label or len(label) > 63:
            raise AddressError(f"invalid domain {text!r}")
        if label[0] not in _LET_DIG or label[-1] not in _LET_DIG or \
                any(ch not in _LDH for ch in label):
            raise AddressError(f"invalid domain {text!r}")
    return text.lower()


def _parse_address_literal(text: str) -> str:
    if not text.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError(f"invalid address literal {text}") from None


def parse_mailbox(text: str, *, utf8: bool = False) -> Address:
    """Parse `local@domain` (RFC 5321 Mailbox) into an Address."""
    local, at = _parse_local(text, utf8)
    domain = parse_domain(text[at + 1:], utf8=utf8)
    return Address(local, domain)


def _strip_source_route(inner: str) -> str:
    """Drop an A-d-l source route (`@a,@b:`): RFC 5321 says to ignore it."""
    if not inner.startswith("@"):
        return inner
    colon = inner.find(":")
    if colon < 0:
        raise AddressError("source route without ':'")
    for hop in inner[:colon].split(","):
        if not hop.startswith("@"):
            raise AddressError("invalid source route")
        parse_domain(hop[1:], literal_ok=False)
    return inner[colon + 1:]


def parse_path(text: str, *, utf8: bool = False, bare_postmaster_domain: str | None = None,
               bare_domain: str | None = None) -> tuple[Address | None, str]:
    """Parse the argument of MAIL FROM: / RCPT TO:.

    Returns (address, rest) where address is None for the null path `<>` and
    rest holds the ESMTP parameters. A path without angle brackets is
    accepted, as Postfix does, when it is one word. `<postmaster>` without a
    domain becomes postmaster@`bare_postmaster_domain` when one is given
    (RFC 5321 4.5.1); any other bare local part gets `bare_domain` when one
    is given (Postfix's append_at_myorigin, for the server's own programs).
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = _find_path_end(text)
        inner, rest = text[1:end], text[end + 1:]
        if end + 1 > MAX_PATH:
            raise AddressError(f"path longer than {MAX_PATH} octets")
        if rest and not rest.startswith(" "):
            raise AddressError("garbage after the address")
    else:
        inner, _, rest = text.partition(" ")
    rest = rest.strip(" ")
    if inner == "":
        if not text.startswith("<"):
            raise AddressError("missing address")
        return None, rest
    if bare_postmaster_domain is not None and inner.lower() == "postmaster":
        return Address("postmaster", bare_postmaster_domain), rest
    if bare_domain is not None and "@" not in inner and not inner.startswith('"'):
        inner = f"{inner}@{bare_domain}"
    return parse_mailbox(_strip_source_route(inner), utf8=utf8), rest


def _find_path_end(text: str) -> int:
    """Index of the '>' that closes the path at text[0] == '<', skipping quotes."""
    i = 1
    in_quotes = False
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ">":
            return i
        i += 1
    raise AddressError("missing '>' at the end of the address")
