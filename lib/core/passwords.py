"""Password hashes (scrypt, self-describing), constant-time checks, SASL decoding.

A hash line looks like `$scrypt$ln=14,r=8,p=1$<salt>$<key>` (base64 without
padding), the layout passlib uses, so the parameters travel with the hash and
can be raised later without breaking old lines. N = 2^14, r = 8, p = 1 is the
"interactive login" setting of the scrypt paper: about 25 ms and 16 MiB here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass

SCHEME = "scrypt"
DEFAULT_LN, DEFAULT_R, DEFAULT_P = 14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_LN = 20                 # 2^20 * 128 * r bytes: beyond this a hash is a memory bomb
MAX_PASSWORD = 1024         # octets; longer input is refused before any hashing


@dataclass(frozen=True)
class ScryptHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: bytes, params: ScryptHash | None, salt: bytes) -> bytes:
    ln, r, p = (params.ln, params.r, params.p) if params else (DEFAULT_LN, DEFAULT_R, DEFAULT_P)
    return hashlib.scrypt(password, salt=salt, n=2 ** ln, r=r, p=p,
                          maxmem=256 * r * 2 ** ln + 1024 * 1024, dklen=KEY_BYTES)


def hash_password(password: str) -> str:
    """A new salted hash line for [mailboxes]."""
    salt = os.urandom(SALT_BYTES)
    key = _derive(password.encode("utf-8"), None, salt)
    return f"${SCHEME}$ln={DEFAULT_LN},r={DEFAULT_R},p={DEFAULT_P}${_b64(salt)}${_b64(key)}"


def parse_hash(line: str) -> ScryptHash:
    """Parse a hash line; raise ValueError saying what is wrong with it."""
    parts = line.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != SCHEME:
        raise ValueError(f"expected ${SCHEME}$ln=..,r=..,p=..$salt$key")
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        ln, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError):
        raise ValueError("bad parameters, expected ln=..,r=..,p=..") from None
    if not (1 <= ln <= MAX_LN and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"parameters out of range (ln 1-{MAX_LN}, r 1-32, p 1-16)")
    try:
        salt, key = _unb64(parts[3]), _unb64(parts[4])
    except (binascii.Error, ValueError):
        raise ValueError("salt or key is not base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return ScryptHash(ln, r, p, salt, key)


def verify(password: str, line: str) -> bool:
    """True when `password` matches the hash line; the comparison is constant-time."""
    encoded = password.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PASSWORD:
        return False
    try:
        params = parse_hash(line)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(encoded, params, params.salt), params.key)


_NO_GATE = contextlib.nullcontext()


class VerifyCache:
    """Remembers recent successful checks so a mail client polling every few
    minutes does not pay the KDF each time (Dovecot's auth_cache does the same).

    Entries are keyed by an HMAC of (hash line, password) under a per-process
    secret, so the cache itself holds nothing that reveals a password.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 1024):
        self._secret = secrets.token_bytes(32)
        self._ttl = ttl
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: dict[bytes, float] = {}

    def _token(self, password: str, line: str) -> bytes:
        data = line.encode() + b"\0" + password.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def verify(self, password: str, line: str, gate=None) -> bool:
        """A cache hit answers at once; a miss runs the KDF inside `gate` (a
        semaphore bounding how many run at once), when one is given."""
        token = self._token(password, line)
        now = time.monotonic()
        with self._lock:
            expires = self._entries.get(token)
            if expires is not None and expires > now:
                return True
        with gate or _NO_GATE:
            matched = verify(password, line)
        if not matched:
            return False
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries = {k: v for k, v in self._entries.items() if v > now}
                if len(self._entries) >= self._max:
                    self._entries.clear()
            self._entries[token] = now + self._ttl
        return True


# ---------------------------------------------------------------- SASL

class SaslError(ValueError):
    """A SASL message that cannot be decoded (answered with 501 / -ERR)."""


def b64decode_response(text: str) -> bytes:
    """Decode one base64 SASL response line (RFC 4954 / RFC 5034)."""
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("not valid base64") from None


def decode_plain(response: bytes) -> tuple[str, str]:
    """SASL PLAIN (RFC 4616): authzid NUL authcid NUL passwd -> (user, password).

    An authorization identity different from the login name is refused: no
    user may act for another.
    """
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise SaslError("PLAIN needs authzid NUL authcid NUL password")
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN credentials are not UTF-8") from None
    if not user:
        raise SaslError("empty user name")
    if authzid and authzid.lower() != user.lower():
        raise SaslError("authorization identity differs from the user")
    return user, password


def decode_text(response: bytes) -> str:
    """One LOGIN field (user name or password), UTF-8."""
    try:
        return response.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("not UTF-8") from None
