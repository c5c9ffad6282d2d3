"""Hardening under abuse and faults: what a stranger can no longer do to the
server, and the faults it now repairs or survives."""

from __future__ import annotations

import socket
import ssl

import pytest

# ---------------------------------------------------------------- TLS

def _client(cert, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    return context


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                                   "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"])
def test_no_cbc_suite_is_offered(servers, certificate, suite):
    server = servers(listen={"pop3s": "127.0.0.1:0"}, tls=certificate)
    with socket.create_connection(("127.0.0.1", server.port("pop3s")), timeout=20) as raw:
        with pytest.raises(ssl.SSLError):
            _client(certificate[0], suite).wrap_socket(raw, server_hostname="mail.example.org")


def test_aead_suites_and_tls13_are_offered(servers, certificate):
    server = servers(listen={"pop3s": "127.0.0.1:0"}, tls=certificate)
    for context in (_client(certificate[0], "ECDHE-ECDSA-AES128-GCM-SHA256"),
                    ssl.create_default_context(cafile=str(certificate[0]))):
        with socket.create_connection(("127.0.0.1", server.port("pop3s")), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="mail.example.org") as tls:
                assert tls.recv(100).startswith(b"+OK")
                assert "GCM" in tls.cipher()[0] or tls.version() == "TLSv1.3"
