"""Hardening under abuse and faults: what a stranger can no longer do to the
server, and the faults it now repairs or survives."""

from __future__ import annotations

import os
import poplib
import pwd
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys

import pytest

from ..helpers.cli import SCRIPT
from ..helpers.ini import PASSWORD
from ..helpers.server import server_config

NOBODY = pwd.getpwnam("nobody")

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


# ---------------------------------------------------------------- broken Maildirs

def _send(port: int, to: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("sender@example.com", to, f"Subject: {subject}\r\n\r\nbody\r\n")


@pytest.mark.parametrize("missing", ["tmp", "new", "cur", ""])
def test_a_maildir_missing_a_folder_repairs_itself(servers, missing):
    server = servers(listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"})
    _send(server.port("smtp"), ["alice@example.org"], "first")
    maildir = server.data / "mail" / "alice"
    shutil.rmtree(maildir / missing)                  # "" removes the whole Maildir
    _send(server.port("smtp"), ["alice@example.org"], "second")
    client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=20)
    try:
        client.user("alice")
        client.pass_(PASSWORD)
        expected = 2 if missing in ("tmp", "cur") else 1     # new/ held the first message
        assert client.stat()[0] == expected
    finally:
        client.quit()
    for sub in ("tmp", "new", "cur"):
        assert (maildir / sub).is_dir(), sub
    assert "Traceback" not in server.log_text()


def test_a_copy_that_fails_takes_back_the_others(servers):
    server = servers()
    _send(server.port(), ["alice@example.org", "bhayden@example.org"], "warm up")
    blocked = server.data / "mail" / "bhayden" / "new"
    blocked.chmod(0o500)                              # root ignores modes: use the immutable bit
    subprocess.run(["chattr", "+i", str(blocked)], check=True)
    try:
        for _ in range(3):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                _send(server.port(), ["alice@example.org", "bhayden@example.org"], "retry me")
            assert refused.value.smtp_code == 451
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
        blocked.chmod(0o700)
    assert len(server.messages("alice")) == 1         # only the warm-up: no partial copies
    assert len(server.messages("bhayden")) == 1


# ---------------------------------------------------------------- check's warnings

def _warnings(ini) -> list[str]:
    result = subprocess.run([sys.executable, str(SCRIPT), "-c", str(ini), "check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("warning: ")]


def test_check_warns_about_an_ini_others_can_change(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    ini = folder / "server.ini"
    ini.write_text(server_config(tmp_path).replace("log_level = debug",
                                                 "log_level = debug\nuser = nobody"))
    ini.chmod(0o660)
    assert any(f"the INI file {ini} is writable by group" in w for w in _warnings(ini))
    ini.chmod(0o640)
    folder.chmod(0o777)
    assert any(f"the INI's folder {folder} is writable by every user" in w
               for w in _warnings(ini))
    folder.chmod(0o755)
    os.chown(ini, NOBODY.pw_uid, 0)
    assert any(f"{ini} belongs to [server] user nobody" in w for w in _warnings(ini))
    os.chown(ini, 0, 0)
    assert not any("INI" in w and "writable" in w or "belongs to" in w for w in _warnings(ini))


def test_check_warns_about_a_key_everyone_can_read_and_root_without_user(tmp_path, certificate):
    ini = tmp_path / "server.ini"
    key = tmp_path / "key.pem"
    shutil.copy(certificate[1], key)
    key.chmod(0o644)
    ini.write_text(server_config(tmp_path, tls=(certificate[0], key)))
    found = _warnings(ini)
    assert any(f"[tls] key: {key} is readable by every user" in w for w in found)
    assert any("[server] user is not set: started as root" in w for w in found)


# ---------------------------------------------------------------- the pid file

def _serve(ini, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "-c", str(ini), "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_pid_file_never_replaces_another_file(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    (run / "through-a-link.pid").symlink_to(victim)
    (run / "a-file.pid").write_text("important\n")
    for name in ("through-a-link.pid", "a-file.pid"):
        result = _serve(ini, "--pid-file", str(run / name))
        assert result.returncode == 1
        assert result.stderr.startswith(f"serve: [server] pid_file: {run / name} ")
    assert victim.read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert (run / "a-file.pid").read_text() == "important\n"


def test_the_pid_file_is_refused_in_a_folder_others_can_write(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)                           # like /tmp
    result = _serve(ini, "--pid-file", str(shared / "server.pid"))
    assert result.returncode == 1
    assert f"[server] pid_file: {shared} can be written by other users" in result.stderr
    assert not (shared / "server.pid").exists()


def test_a_mailbox_lock_that_cannot_be_made_is_a_sys_temp_and_one_log_line(servers):
    server = servers(listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"})
    _send(server.port("smtp"), ["alice@example.org"], "first")
    maildir = server.data / "mail" / "alice"
    subprocess.run(["chattr", "+i", str(maildir)], check=True)     # no new file in it
    try:
        client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=20)
        client.user("alice")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_(PASSWORD)
        assert refused.value.args[0].startswith(b"-ERR [SYS/TEMP]")
        client.quit()
    finally:
        subprocess.run(["chattr", "-i", str(maildir)], check=True)
    log = server.wait_for_log("event=pop3_error")
    assert "Traceback" not in log
