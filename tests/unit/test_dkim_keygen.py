"""dkim-keygen: the missing keys made (mode 0600 in 0700 folders, owned by
[server] user when run as root), never one replaced, each printed as the TXT
record to publish; a second run makes nothing and prints the same."""

from __future__ import annotations

import os
import pwd
import stat
import sys

import pytest

from lib.outbound import dkim

from ..helpers.dnsrecords import cli_in_process, dkim_config, txt_records, zone_records

NOBODY = pwd.getpwnam("nobody")


def keygen(ini, *domains: str):
    return cli_in_process("-c", str(ini), "dkim-keygen", *domains)


def test_keygen_makes_both_kinds_for_every_domain_and_prints_their_records(tmp_path):
    data_dir = tmp_path / "data"
    made = keygen(dkim_config(tmp_path, data_dir))
    assert made.returncode == 0, made.stderr
    records = txt_records(made.stdout)
    assert sorted(records) == ["mail-ed25519._domainkey.example.net.",
                               "mail-ed25519._domainkey.example.org.",
                               "mail-rsa._domainkey.example.net.",
                               "mail-rsa._domainkey.example.org."]
    assert records["mail-rsa._domainkey.example.org."].startswith("v=DKIM1; k=rsa; p=MIIB")
    assert records["mail-ed25519._domainkey.example.net."].startswith("v=DKIM1; k=ed25519; p=")
    for domain in ("example.org", "example.net"):
        for selector in ("mail-rsa", "mail-ed25519"):
            path = dkim.key_path(data_dir, domain, selector)
            assert f"; made {path} " in made.stdout
            key = dkim.load_key(data_dir, domain, selector.split("-")[1], selector)
            assert key is not None and key.public_record() == records[key.record_name]
    # each TXT string is at most 255 octets (RFC 1035 3.3); the RSA one needs two
    lines = [line for line in made.stdout.splitlines() if " IN TXT " in line]
    strings = [part for line in lines for part in line.split(" IN TXT ")[1].split('" "')]
    assert max(len(part.strip('"')) for part in strings) == 255


@pytest.mark.skipif(os.geteuid() != 0, reason="owners can be given only by root")
def test_run_by_root_the_keys_and_folders_belong_to_the_mail_user_mode_600_and_700(tmp_path):
    data_dir = tmp_path / "data"
    made = keygen(dkim_config(tmp_path, data_dir, algorithms="ed25519",
                              server={"user": "nobody"}), "example.org")
    assert made.returncode == 0, made.stderr
    key = dkim.key_path(data_dir, "example.org", "mail")
    for path, mode in ((key, 0o600), (key.parent, 0o700), (key.parent.parent, 0o700),
                       (data_dir, 0o700)):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == \
            (mode, NOBODY.pw_uid, NOBODY.pw_gid), path
    assert os.listdir(key.parent) == ["mail.key"]          # no temporary file left


def test_a_second_run_makes_nothing_and_prints_the_same_records(tmp_path):
    data_dir = tmp_path / "data"
    ini = dkim_config(tmp_path, data_dir)
    first = keygen(ini, "example.org")
    paths = sorted((data_dir / "dkim").rglob("*"))
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in paths
              if path.is_file()}
    second = keygen(ini, "example.org")
    assert second.returncode == 0, second.stderr
    assert sorted((data_dir / "dkim").rglob("*")) == paths
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before
    assert "; made" not in second.stdout and second.stdout.count("; kept ") == 2
    assert zone_records(second.stdout) == zone_records(first.stdout)


def test_a_key_already_there_is_kept_and_printed_never_replaced(tmp_path):
    data_dir = tmp_path / "data"
    mine = dkim.new_key_file("ed25519")
    path = dkim.key_path(data_dir, "example.org", "mail")
    path.parent.mkdir(parents=True)
    path.write_bytes(mine)
    made = keygen(dkim_config(tmp_path, data_dir, algorithms="ed25519"))
    assert made.returncode == 0, made.stderr
    assert path.read_bytes() == mine
    expected = dkim.parse_key(mine, "ed25519", "example.org", "mail").public_record()
    assert txt_records(made.stdout)["mail._domainkey.example.org."] == expected
    assert dkim.key_path(data_dir, "example.net", "mail").exists()      # the missing one


def test_a_damaged_key_is_reported_with_its_path_and_the_others_are_still_made(tmp_path):
    data_dir = tmp_path / "data"
    broken = dkim.key_path(data_dir, "example.org", "mail")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nbroken\n")
    made = keygen(dkim_config(tmp_path, data_dir, algorithms="rsa"))
    assert made.returncode == 1
    assert made.stderr.startswith(f"dkim-keygen: {broken}: not an rsa private key")
    assert broken.read_bytes().endswith(b"broken\n")
    assert list(txt_records(made.stdout)) == ["mail._domainkey.example.net."]


def test_a_domain_that_is_not_local_is_a_usage_error(tmp_path):
    made = keygen(dkim_config(tmp_path, tmp_path / "data"), "example.org", "gmail.example")
    assert made.returncode == 2
    assert "gmail.example is not one of this server's [domains]" in made.stderr
    assert not (tmp_path / "data").exists()


def test_without_cryptography_keygen_says_which_package_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)       # import now fails
    made = keygen(dkim_config(tmp_path, tmp_path / "data", algorithms="ed25519"))
    assert made.returncode == 1
    assert made.stderr == ("dkim-keygen: making DKIM keys needs the Python package cryptography "
                           "(apt install python3-cryptography, or pip install cryptography)\n")
