"""DKIM signing: signatures that dkimpy verifies against the records dkim-keygen
printed, for both algorithms; relaxed/relaxed with From: over-signed; keys
read once; a domain without a key, a broken key or a missing library sends
the message unsigned and says why."""

from __future__ import annotations

import logging
import re
import sys

import dkim as dkimpy
import pytest

from lib.config import schema as config_module
from lib.log.events import EventLog
from lib.outbound import dkim

from ..helpers.dnsrecords import cli_in_process, dkim_config, txt_records

MESSAGE = (b"Received: from pc.example.org by mail.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"From: Brian Hayden <bhayden@example.org>\r\n"
           b"To: friend@elsewhere.example\r\n"
           b"Subject: the  garden\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@example.org>\r\n"
           b"X-Mailer: test\r\n"
           b"\r\n"
           b"The roses are out.  \r\n"
           b"\r\n")


@pytest.fixture(scope="session")
def keyed(tmp_path_factory):
    """A data_dir with RSA and Ed25519 keys for example.org (none for example.net),
    made by dkim-keygen, and the TXT records it printed: {name: text}."""
    folder = tmp_path_factory.mktemp("dkim")
    data_dir = folder / "data"
    ini = dkim_config(folder, data_dir)
    made = cli_in_process("-c", str(ini), "dkim-keygen", "example.org")
    assert made.returncode == 0, made.stderr
    return data_dir, txt_records(made.stdout)


@pytest.fixture
def config(keyed, tmp_path):
    """config(algorithms=..., selector=...) -> a Config over the session's keys."""
    def make(algorithms: str = "rsa, ed25519", selector: str = "mail"):
        ini = dkim_config(tmp_path, keyed[0], algorithms=algorithms, selector=selector)
        return config_module.load(ini)
    return make


def published(records: dict[str, str]):
    """dkimpy's DNS: the records dkim-keygen printed."""
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        text = records.get(name.decode().rstrip(".") + ".")
        return text.encode() if text is not None else None
    return dnsfunc


def verifies(message: bytes, records: dict[str, str], index: int = 0) -> bool:
    try:
        return bool(dkimpy.DKIM(message).verify(idx=index, dnsfunc=published(records)))
    except dkimpy.ValidationError:           # dkimpy's answer to a changed body
        return False


def tags(field: bytes) -> dict[str, str]:
    value = field.decode().split(":", 1)[1]
    return {name.strip(): re.sub(r"\s+", "", data)
            for name, _, data in (part.partition("=") for part in value.split(";"))}


@pytest.fixture
def warnings(caplog):
    """(an EventLog for sign(), the warning lines it wrote)."""
    logger = logging.getLogger("test.dkim")
    caplog.set_level(logging.WARNING, logger="test.dkim")
    return EventLog("dkim", logger=logger), caplog


# ---------------------------------------------------------------- signatures

def test_both_algorithms_sign_and_dkimpy_verifies_them_against_the_printed_records(
        keyed, config):
    fields = dkim.Signer(config()).sign(MESSAGE, "example.org")
    assert [tags(field)["a"] for field in fields] == ["rsa-sha256", "ed25519-sha256"]
    assert [tags(field)["s"] for field in fields] == ["mail-rsa", "mail-ed25519"]
    signed = b"".join(fields) + MESSAGE
    assert verifies(signed, keyed[1], 0) and verifies(signed, keyed[1], 1)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_one_algorithm_gives_one_signature_under_the_plain_selector(keyed, config, algorithm):
    # with one algorithm the selector is [dkim] selector itself: here mail-<algorithm>
    fields = dkim.Signer(config(algorithm, f"mail-{algorithm}")).sign(MESSAGE, "Example.ORG")
    assert len(fields) == 1 and tags(fields[0])["s"] == f"mail-{algorithm}"
    assert verifies(fields[0] + MESSAGE, keyed[1])


def test_the_signature_is_relaxed_and_signs_the_recommended_fields_with_from_once_more(config):
    fields = dkim.Signer(config("rsa", "mail-rsa")).sign(MESSAGE, "example.org")
    signature = tags(fields[0])
    assert signature["c"] == "relaxed/relaxed" and signature["d"] == "example.org"
    assert signature["h"].split(":") == ["from", "to", "subject", "date", "message-id", "from"]
    assert fields[0].endswith(b"\r\n") and all(len(line) <= 78
                                               for line in fields[0].split(b"\r\n"))


def test_relaxed_canonicalization_survives_rewrapping_and_whitespace(keyed, config):
    signed = b"".join(dkim.Signer(config()).sign(MESSAGE, "example.org")) + MESSAGE
    mangled = (signed.replace(b"Subject: the  garden", b"SUBJECT:the garden  ")
               .replace(b"The roses are out.  \r\n", b"The roses   are out.\r\n\r\n\r\n"))
    assert verifies(mangled, keyed[1], 0) and verifies(mangled, keyed[1], 1)


@pytest.mark.parametrize("change", [
    (b"The roses are out.", b"The roses are dead."),
    (b"Subject: the  garden", b"Subject: the lawn"),
    # (dkimpy checks every From: itself; the h= test above shows the over-signing
    # that makes an RFC 6376 verifier, which picks fields bottom-up, notice it)
    (b"DKIM-Signature:", b"From: mallory@evil.example\r\nDKIM-Signature:"),
], ids=["body", "subject", "from-on-top"])
def test_a_changed_body_subject_or_an_added_from_fails_verification(keyed, config, change):
    signed = b"".join(dkim.Signer(config()).sign(MESSAGE, "example.org")) + MESSAGE
    tampered = signed.replace(*change, 1)
    assert tampered != signed
    assert not verifies(tampered, keyed[1], 0) and not verifies(tampered, keyed[1], 1)


def test_the_key_files_are_in_the_formats_dkimpy_itself_signs_with(keyed):
    data_dir, records = keyed
    for algorithm, selector in (("rsa", "mail-rsa"), ("ed25519", "mail-ed25519")):
        key = dkim.key_path(data_dir, "example.org", selector).read_bytes()
        field = dkimpy.sign(MESSAGE, selector.encode(), b"example.org", key,
                            signature_algorithm=dkim.SIGNATURE_ALGORITHM[algorithm],
                            canonicalize=(b"relaxed", b"relaxed"))
        assert verifies(field + MESSAGE, records)


# ---------------------------------------------------------------- no key, broken keys

def test_a_domain_without_a_key_or_not_local_gets_no_signature_and_no_warning(config, warnings):
    log, caplog = warnings
    signer = dkim.Signer(config())
    assert signer.sign(MESSAGE, "example.net", log) == []
    assert signer.sign(MESSAGE, "elsewhere.example", log) == []
    assert caplog.records == []


def test_keys_are_read_and_parsed_once(config, monkeypatch):
    reads = []
    real = dkim.parse_key
    monkeypatch.setattr(dkim, "parse_key", lambda *args: reads.append(args[1:]) or real(*args))
    signer = dkim.Signer(config())
    for _ in range(5):
        assert len(signer.sign(MESSAGE, "example.org")) == 2
    assert sorted(read[0] for read in reads) == ["ed25519", "rsa"]


def test_a_broken_key_sends_unsigned_by_it_and_logs_why_with_every_message(
        tmp_path, keyed, warnings):
    log, caplog = warnings
    data_dir = tmp_path / "data"
    good = dkim.key_path(keyed[0], "example.org", "mail-rsa")
    for selector, content in (("mail-rsa", good.read_bytes()), ("mail-ed25519", b"no key\n")):
        path = dkim.key_path(data_dir, "example.org", selector)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    signer = dkim.Signer(config_module.load(dkim_config(tmp_path, data_dir)))
    for _ in range(2):
        fields = signer.sign(MESSAGE, "example.org", log)
        assert [tags(field)["s"] for field in fields] == ["mail-rsa"]
        assert verifies(fields[0] + MESSAGE, keyed[1])
    failed = [r.getMessage() for r in caplog.records if "event=dkim_failed" in r.getMessage()]
    assert len(failed) == 2 and "selector=mail-ed25519" in failed[0]
    assert "mail-ed25519.key" in failed[0] and "not an ed25519 private key" in failed[0]


def test_a_message_that_cannot_be_parsed_goes_unsigned_with_a_warning(config, warnings):
    log, caplog = warnings
    assert dkim.Signer(config()).sign(b"no header here\r\n\r\nbody\r\n", "example.org", log) == []
    assert len(caplog.records) == 2 and "cannot parse the message" in caplog.text


def test_without_dkimpy_the_message_goes_unsigned_and_the_log_names_the_packages(
        config, warnings, monkeypatch):
    log, caplog = warnings
    monkeypatch.setitem(sys.modules, "dkim", None)       # import dkim now fails
    dkim._dkimpy.cache_clear()
    try:
        assert dkim.Signer(config("rsa", "mail-rsa")).sign(MESSAGE, "example.org", log) == []
    finally:
        dkim._dkimpy.cache_clear()
    assert "apt install python3-dkim, or pip install dkimpy" in caplog.text


# ---------------------------------------------------------------- one signer per config

def test_sign_keeps_one_signer_per_config_so_a_reload_sees_new_keys(config):
    first = config()
    assert dkim.signer_for(first) is dkim.signer_for(first)
    assert len(dkim.sign(MESSAGE, "example.org", first)) == 2
    again = config()
    assert dkim.signer_for(again) is not dkim.signer_for(first)
