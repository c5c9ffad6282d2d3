"""TLS in tests: a certificate made at test time, and the contexts that use it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from .ini import HOSTNAME


def make_certificate(folder: Path, hostname: str = HOSTNAME,
                     days: int = 2) -> tuple[Path, Path]:
    """A self-signed certificate and key for `hostname` and 127.0.0.1, made now."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj",
         f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return cert, key


def client_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only the test certificate and verifies the
    server's name (mail.example.org or 127.0.0.1) against it."""
    return ssl.create_default_context(cafile=str(cert))


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A server context presenting the test certificate (for sink servers)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context
