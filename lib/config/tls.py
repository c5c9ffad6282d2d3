"""TLS: the server's SSLContext (STARTTLS, STLS, ports 465 and 995) and the
client contexts for outbound delivery."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from .schema import Config

# Mozilla's "intermediate" set for TLS 1.2 (ssl-config.mozilla.org, v5.7): forward
# secrecy and AEAD only, so no CBC suite (LUCKY13 and friends) is ever offered.
INTERMEDIATE_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))


@dataclass(frozen=True)
class TlsInfo:
    """What a session knows about its TLS layer, for logs and Received headers."""
    version: str
    cipher: str
    bits: int

    def describe(self) -> str:
        return f"{self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context for every TLS listener, or None when [tls] is not set.

    Raises ConfigError naming [tls] when the files cannot be used.
    """
    if not config.tls.enabled:
        return None
    for key, path in (("cert", config.tls.cert), ("key", config.tls.key)):
        try:
            with open(str(path), "rb"):          # name the file that cannot be read
                pass
        except OSError as error:
            raise config.error("tls", key, f"cannot read {path}: {error.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(INTERMEDIATE_TLS12_CIPHERS)     # TLS 1.3 suites are all AEAD anyway
    try:
        context.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except ssl.SSLError as error:
        reason = str(error.reason or error)
        if "MISMATCH" in reason.upper():
            raise config.error("tls", "key", f"{config.tls.key} does not belong to the "
                               f"certificate {config.tls.cert}") from None
        raise config.error("tls", "cert", f"cannot load {config.tls.cert} with key "
                           f"{config.tls.key}: not PEM files of a certificate and its "
                           f"private key ({reason})") from None
    except OSError as error:
        raise config.error("tls", "cert", f"cannot read: {error.strerror}") from None
    return context


def info_of(sock: ssl.SSLSocket) -> TlsInfo:
    cipher = sock.cipher() or ("unknown", "", 0)
    return TlsInfo(version=sock.version() or "TLS", cipher=cipher[0], bits=cipher[2] or 0)


def opportunistic_client_context() -> ssl.SSLContext:
    """For STARTTLS to MX hosts: encrypt whenever offered, without verifying the
    certificate, as MTAs do (RFC 7435); a failed check would only mean plain text."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verifying_client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """For the smarthost: the certificate must be valid for its name."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
