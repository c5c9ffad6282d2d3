"""DKIM for the household's own mail: the key files, read and parsed once per
configuration, and one DKIM-Signature per [dkim] algorithm (RFC 6376; RFC 8463).

Keys live in <data_dir>/dkim/<domain>/<selector>.key: PEM (PKCS#1, as
`openssl genrsa` and opendkim-genkey write it) for RSA; for Ed25519 the
base64 of the 32-byte private seed on one line, the format dkimpy reads
(and its dknewkey writes). A domain without a key is not signed; that is
not an error.

Two libraries, each needed only once a key exists (a missing one is a
one-line error naming its Debian and PyPI packages): dkimpy (python3-dkim)
does the DKIM part, parsing the message, canonicalizing it relaxed/relaxed
and hashing the chosen header fields; cryptography (python3-cryptography,
OpenSSL) does the arithmetic. dkimpy's own RSA is pure Python, about 8 ms
per signature with the GIL held, which alone would hold relaying to about
100 messages/s; OpenSSL's takes 0.4 ms.

Signing failures never lose a message: a message that cannot be signed (a
key file that cannot be read or parsed, a missing library, a message dkimpy
cannot parse) leaves unsigned, and every such message is logged as a warning
(event=dkim_failed, with the reason). Not a tempfail, because the causes are
persistent (a damaged key stays damaged): a tempfail would stop all the
household's outgoing mail until someone reads the log, and `sendmail` from
cron has no queue of its own to retry from. Unsigned mail still passes SPF,
and with it DMARC, when it leaves from this server (`mx`) or the smarthost
that the SPF record includes; `dns-records --check` and `dkim-keygen` show a
broken key before any mail does.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import Config
from ..log.events import EventLog

KEY_FOLDER = "dkim"                  # in data_dir
RSA_BITS = 2048                      # RFC 8301 3.2: at least 1024; 2048 fits every DNS form
SIGNATURE_ALGORITHM = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
# RFC 6376 5.4.1: the header fields to sign when present; and, as dkimpy's own
# default does, Message-ID and Sender (who sent which message) and the MIME
# fields (they decide how the signed body is read).
SIGNED_HEADERS = frozenset({
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc",
    b"resent-date", b"resent-from", b"resent-to", b"resent-cc",
    b"in-reply-to", b"references",
    b"list-id", b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post",
    b"list-owner", b"list-archive",
    b"message-id", b"sender", b"mime-version", b"content-type", b"content-transfer-encoding",
})
SIGNATURE_WIDTH = 72                 # columns of the folded DKIM-Signature's lines

# The optional libraries: import name -> (Debian package, PyPI package).
LIBRARIES = {"dkim": ("python3-dkim", "dkimpy"),
             "cryptography": ("python3-cryptography", "cryptography")}


class DkimError(Exception):
    """A key cannot be made, read or used; the text says why and what to do."""


class MissingLibrary(DkimError):
    def __init__(self, module: str, needed_for: str):
        debian, pypi = LIBRARIES[module]
        super().__init__(f"{needed_for} needs the Python package {pypi} "
                         f"(apt install {debian}, or pip install {pypi})")


def _require(module: str, needed_for: str) -> Any:
    """`dkim`, or cryptography's `primitives` with the submodules used here."""
    try:
        if module == "dkim":
            import dkim
            import dkim.canonicalization  # noqa: F401  (used as dkim.canonicalization)
            return dkim
        import cryptography.hazmat.primitives.asymmetric.ed25519
        import cryptography.hazmat.primitives.asymmetric.padding
        import cryptography.hazmat.primitives.asymmetric.rsa
        import cryptography.hazmat.primitives.asymmetric.utils
        import cryptography.hazmat.primitives.hashes
        import cryptography.hazmat.primitives.serialization  # noqa: F401
        return cryptography.hazmat.primitives
    except ImportError:
        raise MissingLibrary(module, needed_for) from None


@functools.cache
def _dkimpy() -> Any:
    return _require("dkim", "DKIM signing")


@functools.cache
def _rsa_scheme() -> tuple[Any, Any]:
    """RSASSA-PKCS1-v1_5 over a SHA-256 digest computed beforehand."""
    primitives = _require("cryptography", "DKIM signing")
    return (primitives.asymmetric.padding.PKCS1v15(),
            primitives.asymmetric.utils.Prehashed(primitives.hashes.SHA256()))


# ---------------------------------------------------------------- keys

def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    return data_dir / KEY_FOLDER / domain / f"{selector}.key"


@dataclass(frozen=True)
class DkimKey:
    """One parsed private key: what signs a domain's mail under one selector."""
    algorithm: str            # "rsa" | "ed25519"
    domain: str
    selector: str
    private: Any              # a cryptography private key object

    @property
    def record_name(self) -> str:
        """Where the public key is published (RFC 6376 3.6.2.1), absolute."""
        return f"{self.selector}._domainkey.{self.domain}."

    def public_record(self) -> str:
        """The DNS TXT text: `v=DKIM1; k=rsa; p=<base64>` (RFC 6376 3.6.1, RFC 8463 4)."""
        primitives = _require("cryptography", "DKIM keys")
        public = self.private.public_key()
        if self.algorithm == "ed25519":
            raw = public.public_bytes(primitives.serialization.Encoding.Raw,
                                      primitives.serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(primitives.serialization.Encoding.DER,
                                      primitives.serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k={self.algorithm}; p={base64.b64encode(raw).decode('ascii')}"

    def sign_digest(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1) or
        PureEdDSA over the digest itself (RFC 8463 3)."""
        if self.algorithm == "ed25519":
            return self.private.sign(digest)
        return self.private.sign(digest, *_rsa_scheme())


def new_key_file(algorithm: str) -> bytes:
    """The contents of a new key file: RSA 2048 PEM, or an Ed25519 seed in base64."""
    primitives = _require("cryptography", "making DKIM keys")
    serialization = primitives.serialization
    if algorithm == "ed25519":
        key = primitives.asymmetric.ed25519.Ed25519PrivateKey.generate()
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return base64.b64encode(seed) + b"\n"
    key = primitives.asymmetric.rsa.generate_private_key(public_exponent=65537,
                                                         key_size=RSA_BITS)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def parse_key(data: bytes, algorithm: str, domain: str, selector: str) -> DkimKey:
    """A key file's contents parsed; DkimError when they are not a key of that kind."""
    primitives = _require("cryptography", "DKIM keys")
    try:
        if algorithm == "ed25519":
            seed = base64.b64decode(data.strip(), validate=True)
            if len(seed) != 32:
                raise ValueError(f"{len(seed)} bytes instead of a 32-byte Ed25519 seed")
            private: Any = primitives.asymmetric.ed25519.Ed25519PrivateKey.from_private_bytes(
                seed)
        else:
            private = primitives.serialization.load_pem_private_key(data, password=None)
            if not isinstance(private, primitives.asymmetric.rsa.RSAPrivateKey):
                raise ValueError("not an RSA key")
    except (ValueError, TypeError) as error:
        raise DkimError(f"not an {algorithm} private key: {error}") from None
    return DkimKey(algorithm, domain, selector, private)


def load_key(data_dir: Path, domain: str, algorithm: str, selector: str) -> DkimKey | None:
    """The key of `domain` for one selector; None when there is no file.
    DkimError when the file is there but cannot be read or used."""
    path = key_path(data_dir, domain, selector)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DkimError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return parse_key(data, algorithm, domain, selector)
    except DkimError as error:
        raise DkimError(f"{path}: {error}") from None


# ---------------------------------------------------------------- signing

@dataclass(frozen=True)
class _Unusable:
    """A key that exists but cannot sign, and why (logged with every message)."""
    selector: str
    reason: str


class Signer:
    """The keys of one configuration, each read and parsed at its domain's first
    message and kept; a reload builds a new Signer, which is how a key made by
    dkim-keygen comes into use. Thread-safe: sessions share one."""

    def __init__(self, config: Config):
        self.config = config
        self._domains = frozenset(config.domains)
        self._selectors = config.dkim.selectors()
        self._keys: dict[str, tuple[DkimKey | _Unusable, ...]] = {}
        self._lock = threading.Lock()

    def keys(self, domain: str) -> tuple[DkimKey | _Unusable, ...]:
        domain = domain.lower()
        if domain not in self._domains:
            return ()                   # only the household's own domains are signed
        found = self._keys.get(domain)
        if found is None:
            with self._lock:
                found = self._keys.get(domain)
                if found is None:
                    found = self._keys[domain] = self._load(domain)
        return found

    def _load(self, domain: str) -> tuple[DkimKey | _Unusable, ...]:
        found: list[DkimKey | _Unusable] = []
        for algorithm, selector in self._selectors.items():
            try:
                key = load_key(self.config.server.data_dir, domain, algorithm, selector)
                if key is not None:
                    _dkimpy()
                    found.append(key)
            except DkimError as error:
                found.append(_Unusable(selector, str(error)))
        return tuple(found)

    def sign(self, message: bytes, domain: str, log: EventLog | None = None) -> list[bytes]:
        """The DKIM-Signature header fields (each ending in CRLF) to put on top of
        `message`, one per key of `domain`; [] when it has none. Never raises for
        a message that cannot be signed: it is logged and left unsigned."""
        keys = self.keys(domain)
        if not keys:
            return []
        log = log or EventLog("dkim")
        usable = [key for key in keys if isinstance(key, DkimKey)]
        for key in keys:
            if isinstance(key, _Unusable):
                log.warning("dkim_failed", domain=domain, selector=key.selector,
                            reason=key.reason)
        if not usable:
            return []
        try:
            prepared = _Prepared(message)
        except Exception as error:          # dkimpy's MessageFormatError, and anything else
            for key in usable:
                log.warning("dkim_failed", domain=domain, selector=key.selector,
                            reason=f"cannot parse the message: {error}")
            return []
        now = int(time.time())
        fields = []
        for key in usable:
            try:
                fields.append(prepared.signature(key, now))
            except Exception as error:
                log.warning("dkim_failed", domain=domain, selector=key.selector,
                            reason=f"{type(error).__name__}: {error}")
        return fields


class _Prepared:
    """One message parsed, canonicalized and body-hashed once for all its signatures."""

    def __init__(self, message: bytes):
        dkim = self._dkim = _dkimpy()
        self._policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(
            b"relaxed/relaxed")
        headers, body = dkim.rfc822_parse(message)
        self._headers = self._policy.canonicalize_headers(headers)
        names = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
        if b"from" not in names:
            raise ValueError("no From: header field (RFC 6376 5.4 requires signing it)")
        # From: once more than it occurs, so that no From: can be added unnoticed
        self._signed = (*names, b"from")
        body_hash = hashlib.sha256(self._policy.canonicalize_body(body)).digest()
        self._body_hash = base64.b64encode(body_hash)

    def signature(self, key: DkimKey, now: int) -> bytes:
        """The whole `DKIM-Signature: ...` field for `key` (RFC 6376 3.5, 3.7)."""
        tags = [(b"v", b"1"), (b"a", SIGNATURE_ALGORITHM[key.algorithm]),
                (b"c", b"relaxed/relaxed"), (b"d", key.domain.encode("ascii")),
                (b"s", key.selector.encode("ascii")), (b"t", str(now).encode("ascii")),
                (b"h", b" : ".join(self._signed)), (b"bh", self._body_hash), (b"b", b"")]
        value = self._dkim.fold(b"; ".join(name + b"=" + data for name, data in tags),
                                namelen=len(b"DKIM-Signature: "))
        digest = hashlib.sha256()
        # The signed fields, then this field with an empty b= (RFC 6376 3.7)
        self._dkim.hash_headers(digest, self._policy, self._headers, self._signed,
                                (b"DKIM-Signature", b" " + value), None)
        signature = base64.b64encode(key.sign_digest(digest.digest()))
        chunks = [signature[i:i + SIGNATURE_WIDTH - 1]
                  for i in range(0, len(signature), SIGNATURE_WIDTH - 1)]
        # b= goes on lines of its own: whitespace inside it is ignored (RFC 6376 3.5)
        return b"DKIM-Signature: " + value + b"".join(b"\r\n " + c for c in chunks) + b"\r\n"


# ---------------------------------------------------------------- one signer per config

_SIGNERS: list[Signer] = []          # the last few configurations' signers, newest last
_KEEP_SIGNERS = 4                    # a reload adds one; sessions on the old one finish soon
_SIGNERS_LOCK = threading.Lock()


def signer_for(config: Config) -> Signer:
    """The Signer of this configuration object, made at its first use. Kept here,
    not in the session's Runtime, because the session layer sits below this one."""
    with _SIGNERS_LOCK:
        for signer in reversed(_SIGNERS):
            if signer.config is config:
                return signer
        signer = Signer(config)
        _SIGNERS.append(signer)
        del _SIGNERS[:-_KEEP_SIGNERS]
        return signer


def sign(message: bytes, domain: str, config: Config, log: EventLog | None = None) -> list[bytes]:
    """DKIM-Signature fields for `message` from `domain` (see Signer.sign)."""
    return signer_for(config).sign(message, domain, log)
