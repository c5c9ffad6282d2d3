"""Password hashes and SASL decoding."""

from __future__ import annotations

import base64

import pytest

from lib.core import passwords

from ..helpers.ini import HASH, PASSWORD


def test_hash_is_self_describing_and_salted():
    assert HASH.startswith("$scrypt$ln=14,r=8,p=1$")
    parsed = passwords.parse_hash(HASH)
    assert (parsed.ln, parsed.r, parsed.p) == (14, 8, 1)
    assert len(parsed.salt) == 16 and len(parsed.key) == 32
    other = passwords.hash_password(PASSWORD)
    assert other != HASH                     # a new salt every time


def test_verify_right_and_wrong():
    assert passwords.verify(PASSWORD, HASH)
    assert not passwords.verify(PASSWORD + " ", HASH)
    assert not passwords.verify("", HASH)


def test_verify_uses_the_parameters_in_the_hash():
    salt = b"0123456789abcdef"
    import hashlib
    key = hashlib.scrypt(b"pw", salt=salt, n=2 ** 4, r=2, p=1, dklen=32)
    line = f"$scrypt$ln=4,r=2,p=1${base64.b64encode(salt).decode().rstrip('=')}$" \
           f"{base64.b64encode(key).decode().rstrip('=')}"
    assert passwords.verify("pw", line)
    assert not passwords.verify("pW", line)


@pytest.mark.parametrize("line", [
    "", "secret", "$scrypt$", "$bcrypt$ln=14,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    "$scrypt$ln=99,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    "$scrypt$ln=14,r=8$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    "$scrypt$ln=14,r=8,p=1$!!!$AAAAAAAAAAAAAAAAAAAAAA",
    "$scrypt$ln=14,r=8,p=1$AAAA$AAAA",
])
def test_invalid_hashes_are_refused(line):
    with pytest.raises(ValueError):
        passwords.parse_hash(line)
    assert not passwords.verify("anything", line)


def test_overlong_password_is_refused_without_hashing():
    assert not passwords.verify("x" * (passwords.MAX_PASSWORD + 1), HASH)


def test_cache_remembers_success_only():
    cache = passwords.VerifyCache()
    assert not cache.verify("wrong", HASH)
    assert cache.verify(PASSWORD, HASH)
    assert cache.verify(PASSWORD, HASH)
    assert not cache.verify("wrong", HASH)
    other = passwords.hash_password("another")
    assert not cache.verify(PASSWORD, other)   # keyed by hash line and password


def test_cache_is_bounded():
    cache = passwords.VerifyCache(max_entries=2)
    line = "$scrypt$ln=1,r=1,p=1$" + base64.b64encode(b"saltsalt").decode().rstrip("=") + "$"
    import hashlib
    for word in ("a", "b", "c", "d"):
        key = hashlib.scrypt(word.encode(), salt=b"saltsalt", n=2, r=1, p=1, dklen=32)
        full = line + base64.b64encode(key).decode().rstrip("=")
        assert cache.verify(word, full)
    assert len(cache._entries) <= 2


def test_sasl_plain():
    assert passwords.decode_plain(b"\0bhayden\0pw") == ("bhayden", "pw")
    assert passwords.decode_plain(b"bhayden\0bhayden\0pw") == ("bhayden", "pw")
    for bad in (b"bhayden\0pw", b"\0\0pw", b"alice\0bhayden\0pw", b"\0\xff\0pw"):
        with pytest.raises(passwords.SaslError):
            passwords.decode_plain(bad)


def test_sasl_base64():
    assert passwords.b64decode_response("AGJoYXlkZW4AcHc=") == b"\0bhayden\0pw"
    assert passwords.b64decode_response("=") == b""
    with pytest.raises(passwords.SaslError):
        passwords.b64decode_response("not base64!")


def test_cache_misses_run_the_kdf_inside_the_gate():
    entered = []

    class Gate:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False
    cache = passwords.VerifyCache()
    assert cache.verify(PASSWORD, HASH, Gate())
    assert cache.verify(PASSWORD, HASH, Gate())       # a hit: no KDF, no gate
    assert entered == [True]
