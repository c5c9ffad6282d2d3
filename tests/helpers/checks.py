"""For the screening-check tests: a Resolver answering from a dict (unit tests,
no sockets), DKIM keys made at test time with openssl, and messages signed
with dkimpy."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.TXT import TXT

from lib.checks.dns import LIFETIME, DnsFailure, Resolver
from lib.checks.verdict import Screened

from .ini import HOSTNAME


class StubResolver(Resolver):
    """A Resolver whose answers the test sets (`publish_a`, `publish_txt`); names
    in `failing` raise DnsFailure, as a name server that does not answer would."""

    def __init__(self) -> None:
        super().__init__()
        self.zone: dict[tuple[str, str], list] = {}
        self.failing: set[str] = set()
        self.asked: list[tuple[str, str]] = []
        self.lifetimes: list[float] = []

    def publish_a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            rdtype = "AAAA" if ":" in address else "A"
            self._add(name, rdtype, dns.rdata.from_text(dns.rdataclass.IN, rdtype, address))

    def publish_txt(self, name: str, *values: str | bytes) -> None:
        """TXT records, one per value; long values split into 255-octet strings."""
        for value in values:
            data = value.encode() if isinstance(value, str) else value
            chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
            self._add(name, "TXT", TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks))

    def _add(self, name: str, rdtype: str, rdata) -> None:
        self.zone.setdefault((name.lower().rstrip("."), rdtype), []).append(rdata)

    def records(self, name: str, rdtype: str, *, lifetime: float = LIFETIME) -> list:
        name = name.lower().rstrip(".")
        self.asked.append((name, rdtype))
        self.lifetimes.append(lifetime)
        if lifetime <= 0:
            raise DnsFailure(f"no time left to look up {name} {rdtype}")
        if name in self.failing:
            raise DnsFailure(f"no answer for {name} {rdtype} (test)")
        return list(self.zone.get((name, rdtype), []))


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes
    record: str                  # the TXT record to publish: v=DKIM1; k=rsa; p=...

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, message: bytes, *, algorithm: bytes = b"rsa-sha256") -> bytes:
        """The message with this key's DKIM-Signature on top (relaxed/relaxed)."""
        signature = dkim.sign(message, self.selector.encode(), self.domain.encode(),
                              self.private_pem, canonicalize=(b"relaxed", b"relaxed"),
                              include_headers=[b"from", b"to", b"subject", b"date"],
                              signature_algorithm=algorithm)
        return signature + message


def make_key_pem(folder: Path, bits: int = 1024) -> bytes:
    """A new RSA private key in the PKCS#1 PEM form dkimpy reads."""
    path = folder / f"rsa{bits}-{len(list(folder.iterdir()))}.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(path), str(bits)],
                   check=True, capture_output=True, timeout=60)
    return path.read_bytes()


def dkim_key(private_pem: bytes, domain: str, selector: str = "sel") -> DkimKey:
    """A DkimKey for `domain` from a private key; its public half as a DNS record."""
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private_pem,
                         check=True, capture_output=True, timeout=60).stdout
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return DkimKey(domain, selector, private_pem, record)


def message(author: str = "Alice <alice@example.org>", *, extra: str = "",
            body: str = "Hello,\r\nthis is a test.\r\n") -> bytes:
    """A small message with the given From: value (or none when author is "")."""
    head = f"From: {author}\r\n" if author else ""
    return (head + "To: bob@example.net\r\nSubject: test\r\n"
            "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
            f"{extra}\r\n{body}").encode()


def screened(client_ip: str = "192.0.2.25", sender: str = "alice@example.org",
             helo: str = "mx.example.org") -> Screened:
    return Screened(client_ip=client_ip, helo=helo, sender=sender,
                    recipients=("bob@example.net",), msg_id="test", hostname=HOSTNAME)
