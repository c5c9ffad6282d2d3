"""dkimpy, quicker: DKIM verification spends most of its time in dkimpy's RSA
check (Python's pow and byte loops), in parsing the same key record again
for every signature, and in its regular expressions (canonicalisation, and
the one that blanks out b=).
`dkimpy()` gives the dkim module with these shortcuts put in once, for the
whole process; their answers are dkimpy's own (see speed_up_dkimpy and
speed_up_canonicalization).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from .dns import require

KEYS_KEPT = 1000         # parsed DKIM keys kept (by selector name and record), and OpenSSL's


def speed_up_dkimpy(dkim: Any) -> None:
    """Shortcuts for dkimpy; the answers stay dkimpy's. Its RSA check is
    Python's pow and byte loops (two thirds of a verification): here OpenSSL
    checks first (through `cryptography`, when installed, as DKIM signing uses
    it), and only a signature OpenSSL finds wrong is computed again dkimpy's
    way, so that a verdict never differs (a good signature is good to both).
    And dkimpy parses the key record (tags, base64, ASN.1) for every
    signature: here a record already parsed is taken as it was."""
    crypto = dkim.crypto
    openssl = _openssl_rsa()
    public_keys: dict[tuple[int, int], Any] = {}

    def rsa_verify(digest: Any, signature: bytes, public_key: dict) -> bool:
        modulus, exponent = public_key["modulus"], public_key["publicExponent"]
        if openssl is not None and digest.name.lower() in openssl.HASHES:
            found = public_keys.get((modulus, exponent))
            if found is None:
                if len(public_keys) >= KEYS_KEPT:
                    public_keys.clear()
                found = public_keys[modulus, exponent] = openssl.public_key(modulus, exponent)
            if openssl.verify(found, signature, digest):
                return True
        length = (modulus.bit_length() + 7) // 8
        expected = crypto.EMSA_PKCS1_v1_5_encode(digest, length)
        signed = pow(int.from_bytes(signature, "big"), exponent, modulus)
        return signed.to_bytes(length, "big") == expected

    parse_key = dkim.evaluate_pk
    parsed: dict[tuple[Any, Any], Any] = {}

    def evaluate_pk(name: Any, record: Any) -> Any:
        key = (name, record)
        found = parsed.get(key)
        if found is None:
            found = parse_key(name, record)          # raises for a bad record: not kept
            if len(parsed) >= KEYS_KEPT:
                parsed.clear()
            parsed[key] = found
        return found

    dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify
    dkim.evaluate_pk = evaluate_pk
    # The b= value is blanked out of the DKIM-Signature before it is hashed;
    # dkimpy's pattern tries its optional folding groups at each of the ~350
    # characters of the value (a seventh of a verification). Its folding
    # white space, (?:(?:\s*\r?\n)?\s+)?, matches any run of white space, so
    # this one matches the same text, in a tenth of the time (a property test
    # compares the two).
    dkim.RE_BTAG = _B_TAG
    speed_up_canonicalization(dkim.canonicalization)


_B_TAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")


_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_TO_CHANGE = re.compile(rb"\t[\t ]*| [\t ]+")      # a lone space is already canonical


def speed_up_canonicalization(canonicalization: Any) -> None:
    """dkimpy's relaxed canonicalisation (RFC 6376 3.4.2, 3.4.4) calls re.sub
    with a pattern text for every header field and on the body: the pattern
    is looked up in re's cache each time, and every single space of the body
    is "replaced" by a space. Here the same functions, giving the same bytes
    (a property test compares them with dkimpy's): patterns compiled once,
    only the runs of white space that change are matched, and text that has
    none (no tab, no two spaces in a row, no space before a line end) is
    given back as it is."""

    def strip_trailing_whitespace(content: bytes) -> bytes:
        if b" \r\n" not in content and b"\t\r\n" not in content:
            return content
        return _TRAILING_WSP.sub(b"\r\n", content)

    def compress_whitespace(content: bytes) -> bytes:
        if b"\t" not in content and b"  " not in content:
            return content                  # every run of white space is one space
        return _WSP_TO_CHANGE.sub(b" ", content)

    def unfold_header_value(content: bytes) -> bytes:
        # re.sub(b"\r?\n", b"", ...): every LF goes, with a CR just before it
        return content.replace(b"\r\n", b"").replace(b"\n", b"")

    canonicalization.strip_trailing_whitespace = strip_trailing_whitespace
    canonicalization.compress_whitespace = compress_whitespace
    canonicalization.unfold_header_value = unfold_header_value


class _OpenSslRsa:
    """RSASSA-PKCS1-v1_5 verification by OpenSSL, through `cryptography`."""

    def __init__(self) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
        self._invalid = InvalidSignature
        self._rsa = rsa
        self._padding = padding.PKCS1v15()
        self._prehashed = {"sha256": utils.Prehashed(hashes.SHA256()),
                           "sha1": utils.Prehashed(hashes.SHA1())}
        self.HASHES = frozenset(self._prehashed)

    def public_key(self, modulus: int, exponent: int) -> Any:
        try:
            return self._rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError:
            return None                      # OpenSSL will not take it: dkimpy's way only

    def verify(self, key: Any, signature: bytes, digest: Any) -> bool:
        if key is None:
            return False
        try:
            key.verify(signature, digest.digest(), self._padding,
                       self._prehashed[digest.name.lower()])
            return True
        except (self._invalid, ValueError):
            return False


def _openssl_rsa() -> _OpenSslRsa | None:
    try:
        return _OpenSslRsa()
    except ImportError:
        return None


_installed = False
_install_lock = threading.Lock()


def dkimpy(needed_for: str = "[checks] dmarc (DKIM)") -> Any:
    """The dkim module (or MissingLibrary naming its packages), sped up."""
    global _installed
    dkim = require("dkim", needed_for)
    with _install_lock:
        if not _installed:
            speed_up_dkimpy(dkim)
            _installed = True
    return dkim
