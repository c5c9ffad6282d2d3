"""The process as an admin runs it: privilege drop, signals (stop, reload),
log files and logrotate, the init scripts, `check` warnings and `gencert`."""

from __future__ import annotations

import os
import poplib
import pwd
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..helpers.cli import ROOT, SCRIPT, run_cli
from ..helpers.clients import pop3_client, pop3_login, smtplib_client, submit
from ..helpers.ini import MAILBOXES
from ..helpers.net import free_port
from ..helpers.server import new_server, server_config, write_server_config
from ..helpers.tls import make_certificate
from ..helpers.waiting import wait_until

SYSTEM_PYTHON = "/usr/bin/python3"      # world-readable, unlike a pyenv under /root
WITH_CAROL = MAILBOXES + "carol = {hash}\n"


def send(port: int, to: str, subject: str = "hello") -> None:
    """A short message through the SMTP listener on `port`."""
    submit(port, "sender@example.com", [to], f"Subject: {subject}\r\n\r\nbody of {subject}\r\n")


# ---------------------------------------------------------------- privilege drop

@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs the tests to run as root")
def test_started_as_root_it_runs_as_the_mail_user_and_still_delivers(public_folder):
    assert os.path.exists(SYSTEM_PYTHON)
    nobody = pwd.getpwnam("nobody")
    # as the README says: the log's folder belongs to the mail user, who opens it
    logs = public_folder / "logs"
    logs.mkdir()
    os.chown(logs, nobody.pw_uid, nobody.pw_gid)
    # a data_dir that root made earlier, with queue/ and mail/ still root's
    (public_folder / "data" / "queue" / "entries").mkdir(parents=True)
    (public_folder / "data" / "mail" / "alice" / "new").mkdir(parents=True)
    server = new_server(public_folder, python=SYSTEM_PYTHON, server="user = nobody",
                        listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"},
                        log=logs / "server.log")
    server.ini.chmod(0o644)
    server.start()
    try:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert set(uids) == {str(nobody.pw_uid)}           # real, effective, saved, fs
        assert set(gids) == {str(nobody.pw_gid)}
        send(server.port("smtp"), "alice@example.org", "as nobody")
        wait_until(lambda: len(server.messages("alice")) == 1)
        stored = next(server.maildir("alice").iterdir())
        assert stored.stat().st_uid == nobody.pw_uid
        for folder in (server.data, server.data / "queue" / "entries",
                       server.data / "mail" / "alice" / "new"):
            assert folder.stat().st_uid == nobody.pw_uid, folder
        pop = pop3_login(server.port("pop3"))
        assert pop.stat()[0] == 1
        pop.quit()
        wait_until(lambda: "user=nobody" in (logs / "server.log").read_text())
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs the tests to run as root")
def test_unknown_mail_user_refuses_to_start(tmp_path):
    ini = write_server_config(tmp_path, server="user = no-such-user-here")
    result = run_cli("serve", config=ini, timeout=30)
    assert result.returncode == 1
    assert "[server] user: no such user 'no-such-user-here'" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- SIGTERM

def open_data(client) -> None:
    """Greeting, then EHLO, MAIL, RCPT and DATA in one write, up to the 354."""
    assert client.reply().code == 220
    client.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<alice@example.org>\r\n"
                b"DATA\r\n")
    assert [answer.code for answer in client.replies(4)] == [250, 250, 250, 354]


def test_sigterm_during_data_loses_nothing(servers, raw_smtp):
    server = servers(limits="shutdown_grace = 5s\n")
    client = raw_smtp(server)
    open_data(client)
    client.send(b"Subject: in flight\r\n\r\n" + b"line\r\n" * 1000)
    server.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    client.send(b"last line\r\n.\r\n")           # the grace period lets it finish
    assert client.reply().code == 250
    client.send(b"QUIT\r\n")
    client.close()
    assert server.process.wait(30) == 0
    (message,) = server.messages("alice")
    assert message.endswith(b"line\nlast line\n")
    tmp = server.maildir("alice", "tmp")
    assert list(tmp.iterdir()) == []


def test_sigterm_past_the_grace_period_says_421_and_keeps_nothing_partial(servers, raw_smtp):
    server = servers(limits="shutdown_grace = 1s\n")
    client = raw_smtp(server)
    open_data(client)
    client.send(b"Subject: never finished\r\n\r\n" + b"x" * 70 + b"\r\n")
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert client.reply().code == 421
    assert server.process.wait(30) == 0
    assert time.monotonic() - started < 10
    assert server.messages("alice") == []
    assert list(server.maildir("alice", "tmp").iterdir()) == []


def test_sigterm_during_pop3_session_deletes_nothing(servers):
    server = servers(listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"},
                     limits="shutdown_grace = 1s\n")
    send(server.port("smtp"), "alice@example.org")
    wait_until(lambda: len(server.messages("alice")) == 1)
    pop = pop3_login(server.port("pop3"))
    pop.dele(1)
    server.send_signal(signal.SIGTERM)
    assert pop.noop().startswith(b"+OK")            # within the grace period: still served
    server.wait_for_log('reason="server shutting down"')
    with pytest.raises(poplib.error_proto) as refused:
        pop.stat()                                  # then the server said -ERR and closed
    assert b"SYS/TEMP" in refused.value.args[0]
    assert server.process.wait(30) == 0
    assert len(server.messages("alice")) == 1


# ---------------------------------------------------------------- SIGHUP

def test_reload_adds_a_mailbox_without_restart_and_keeps_sessions(servers):
    server = servers(listen={"smtp": "127.0.0.1:0", "pop3": "127.0.0.1:0"})
    send(server.port("smtp"), "alice@example.org")
    wait_until(lambda: len(server.messages("alice")) == 1)
    pop = pop3_login(server.port("pop3"))
    with smtplib_client(server.port("smtp")) as client:
        client.ehlo()
        client.mail("a@example.com")
        assert client.rcpt("carol@example.org")[0] == 550
    server.reconfigure(mailboxes=WITH_CAROL)
    pid = server.process.pid
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("event=reloaded")
    send(server.port("smtp"), "carol@example.org", "after reload")
    wait_until(lambda: len(server.messages("carol")) == 1)
    assert server.process.pid == pid and server.process.poll() is None
    assert pop.stat()[0] == 1                       # the open POP3 session goes on
    pop.quit()


def test_broken_config_on_reload_keeps_the_old_one(servers):
    server = servers()
    server.reconfigure(limits="max_recipents = 3")
    server.send_signal(signal.SIGHUP)
    log = server.wait_for_log("event=reload_failed")
    line = next(text for text in log.splitlines() if "event=reload_failed" in text)
    assert "[limits] max_recipents: unknown key" in line
    send(server.port("smtp"), "alice@example.org", "still serving")
    wait_until(lambda: len(server.messages("alice")) == 1)
    assert server.process.poll() is None


def test_reload_opens_and_closes_listeners(servers):
    server = servers(listen={"smtp": "127.0.0.1:0"})
    pop_port = free_port()
    server.reconfigure(listen={"pop3": f"127.0.0.1:{pop_port}"})
    old_smtp = server.port("smtp")
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("event=reloaded")
    pop = pop3_client(pop_port)
    assert pop.getwelcome().startswith(b"+OK")
    pop.quit()
    wait_until(lambda: _refused(old_smtp), what=f"the old smtp port {old_smtp} closed")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


# ---------------------------------------------------------------- logs

def test_log_file_is_reopened_after_rotation(servers):
    server = servers(log_level="info")
    send(server.port("smtp"), "alice@example.org", "before rotation")
    server.wait_for_log("event=accepted")
    rotated = server.log_path.with_suffix(".log.1")
    server.log_path.rename(rotated)                 # what logrotate does
    send(server.port("smtp"), "alice@example.org", "after rotation")
    wait_until(lambda: server.log_path.exists() and "event=accepted" in
               server.log_path.read_text(), timeout=10)
    assert rotated.read_text().count("event=accepted") == 1


def test_every_line_is_key_value_with_a_timestamp_component_and_id(servers):
    server = servers(log_level="info")
    send(server.port("smtp"), "alice@example.org")
    server.wait_for_log("event=disconnect")
    for line in server.log_text().splitlines():
        stamp, level, rest = line.split(" ", 2)
        assert stamp.endswith("Z") and "T" in stamp and level in ("info", "warning", "error")
        assert rest.startswith("comp=")
        if "comp=smtp" in rest:
            assert " session=" in rest


# ---------------------------------------------------------------- init scripts

def test_systemd_unit_verifies():
    unit = ROOT / "init" / "mailbox-appliance.service"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    text = unit.read_text()
    for needed in ("ExecReload=/usr/bin/python3 /opt/mailbox-appliance/mailbox_appliance.py -c "
                   "/etc/mailbox-appliance/mailbox_appliance.ini reload", "Restart=on-failure",
                   "NoNewPrivileges=yes", "ProtectSystem=strict",
                   "ReadWritePaths=/var/lib/mailbox-appliance", "PrivateTmp=yes"):
        assert needed in text


def test_systemd_verify_would_catch_a_broken_unit(tmp_path):
    broken = tmp_path / "broken.service"
    broken.write_text((ROOT / "init" / "mailbox-appliance.service").read_text()
                      .replace("Type=simple", "Type=simplest"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                            text=True, timeout=60)
    assert "service type" in result.stderr and "simplest" in result.stderr


def test_sysv_script_start_status_reload_stop(tmp_path):
    port = free_port()
    ini = write_server_config(tmp_path, listen={"smtp": f"127.0.0.1:{port}"})
    env = {**os.environ, "PYTHON": sys.executable, "DAEMON": str(SCRIPT), "CONFIG": str(ini),
           "PIDFILE": str(tmp_path / "server.pid"), "OUTPUT": str(tmp_path / "server.out"),
           "STOP_TIMEOUT": "20"}
    script = str(ROOT / "init" / "mailbox-appliance")

    def service(action: str):
        return subprocess.run(["sh", script, action], capture_output=True, text=True,
                              timeout=90, env=env)

    assert "### BEGIN INIT INFO" in Path(script).read_text()
    assert service("status").returncode == 3
    started = service("start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((tmp_path / "server.pid").read_text())
    try:
        status = service("status")
        assert status.returncode == 0 and str(pid) in status.stdout
        send(port, "alice@example.org", "via sysv")
        ini.write_text(server_config(tmp_path, listen={"smtp": f"127.0.0.1:{port}"},
                                     mailboxes=WITH_CAROL))
        reloaded = service("reload")
        assert reloaded.returncode == 0 and reloaded.stdout.startswith("reloaded: "), reloaded
        wait_until(lambda: "event=reloaded" in (tmp_path / "server.log").read_text(),
                   what="the reload in the log (written by its own thread)")
        send(port, "carol@example.org", "after sysv reload")
        assert service("start").stdout.startswith("mailbox-appliance is already running")
    finally:
        stopped = service("stop")
    assert stopped.returncode == 0
    assert not Path(f"/proc/{pid}").exists()
    assert service("status").returncode == 3
    assert (tmp_path / "data" / "mail" / "carol" / "new").is_dir()


def test_sysv_script_refuses_a_broken_config(tmp_path):
    ini = write_server_config(tmp_path, limits="bogus = 1")
    env = {**os.environ, "PYTHON": sys.executable, "DAEMON": str(SCRIPT), "CONFIG": str(ini),
           "PIDFILE": str(tmp_path / "server.pid"), "OUTPUT": str(tmp_path / "server.out")}
    result = subprocess.run(["sh", str(ROOT / "init" / "mailbox-appliance"), "start"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("mailbox-appliance not started: ")
    assert "[limits] bogus: unknown key" in result.stderr
    assert not (tmp_path / "server.pid").exists()


def test_pid_file_from_the_config(servers):
    server = servers(start=False)
    pid_file = server.folder / "run" / "server.pid"
    server.reconfigure(server=f"pid_file = {pid_file}")
    server.start()
    assert pid_file.read_text().strip() == str(server.process.pid)
    assert server.stop() == 0
    assert not pid_file.exists()


# ---------------------------------------------------------------- check warnings and gencert

def check_warnings(ini: Path) -> list[str]:
    result = run_cli("check", config=ini)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("warning: ")]


def test_check_warns_about_readable_secrets(tmp_path):
    ini = write_server_config(tmp_path)
    ini.chmod(0o640)
    assert not any("readable by every user" in w for w in check_warnings(ini))
    ini.chmod(0o644)
    assert any("readable by every user" in w and "password hashes" in w
               for w in check_warnings(ini))


def test_check_warns_about_certificates(tmp_path, monkeypatch):
    cert, key = make_certificate(tmp_path / "tls", hostname="other.example.org")
    ini = write_server_config(tmp_path, tls=(cert, key))
    ini.chmod(0o600)
    assert any("not [server] hostname mail.example.org" in w for w in check_warnings(ini))
    write_server_config(tmp_path, tls=make_certificate(tmp_path / "soon", days=3))
    warnings = check_warnings(ini)
    assert any("expires in 3 days" in w or "expires in 2 days" in w for w in warnings), warnings
    assert not any("not [server] hostname" in w for w in warnings)
    # ten days later the same certificate has expired (openssl here cannot
    # back-date one, so the clock moves instead)
    from types import SimpleNamespace

    from lib.cli import preflight
    from lib.config import schema as config_module
    monkeypatch.setattr(preflight, "time", SimpleNamespace(time=lambda: time.time() + 10 * 86400))
    assert any("expired on" in w for w in preflight.warnings(config_module.load(ini)))


def test_check_warns_about_clear_text_logins_beyond_loopback(tmp_path):
    ini = write_server_config(tmp_path, listen={"submission": "0.0.0.0:2587",
                                                 "pop3": "127.0.0.1:2110"})
    ini.chmod(0o600)
    warnings = check_warnings(ini)
    assert any("no [tls] while submission 0.0.0.0:2587" in w for w in warnings)
    assert not any("pop3 127.0.0.1" in w for w in warnings)


def test_check_warns_when_the_mail_user_cannot_write_data_dir(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    ini = write_server_config(tmp_path, server="user = nobody")
    ini.chmod(0o600)
    assert any("[server] data_dir" in w and "not writable by nobody" in w
               for w in check_warnings(ini))
    write_server_config(tmp_path, server="user = nobody-at-all")
    assert any("no user 'nobody-at-all'" in w for w in check_warnings(ini))


def test_gencert_makes_a_usable_certificate(tmp_path):
    ini = write_server_config(tmp_path)
    result = run_cli("gencert", "--days", "30", config=ini)
    assert result.returncode == 0, result.stderr
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"cert = {cert}" in result.stdout
    details = ssl._ssl._test_decode_cert(str(cert))
    assert ("DNS", "mail.example.org") in details["subjectAltName"]
    again = run_cli("gencert", config=ini)
    assert again.returncode == 2 and "exists already" in again.stderr
    write_server_config(tmp_path, tls=(cert, key))
    ini.chmod(0o600)
    assert run_cli("check", config=ini).returncode == 0
    assert [w for w in check_warnings(ini) if "[tls]" in w or "certificate" in w] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs the tests to run as root")
def test_a_log_the_mail_user_cannot_open_falls_back_to_stderr(public_folder):
    server = new_server(public_folder, python=SYSTEM_PYTHON, server="user = nobody")
    server.ini.chmod(0o644)
    server.start()
    try:
        send(server.port("smtp"), "alice@example.org", "logged to stderr")
        wait_until(lambda: len(server.messages("alice")) == 1)
        wait_until(lambda: any("event=accepted" in line for line in server.stderr_lines))
        warning = next(line for line in server.stderr_lines if "event=log_unavailable" in line)
        assert 'key="[server] log"' in warning and "Permission denied" in warning
    finally:
        assert server.stop() == 0


def test_reload_to_a_log_that_cannot_be_opened_keeps_serving(servers):
    server = servers()
    blocked = server.folder / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    server.reconfigure(log=blocked / "server.log")
    server.send_signal(signal.SIGHUP)
    log = server.wait_for_log("event=reload_failed")
    assert 'key="[server] log"' in log
    send(server.port("smtp"), "alice@example.org", "still logging")
    wait_until(lambda: len(server.messages("alice")) == 1)
    server.wait_for_log("event=accepted")
    assert server.process.poll() is None


def test_log_lines_survive_a_log_file_that_cannot_be_reopened(servers):
    server = servers(log_level="info")
    send(server.port("smtp"), "alice@example.org", "before")
    server.wait_for_log("event=accepted")
    server.log_path.rename(server.log_path.with_suffix(".old"))
    server.log_path.mkdir()                        # logrotate "left" a directory there
    send(server.port("smtp"), "alice@example.org", "after")
    wait_until(lambda: len(server.messages("alice")) == 2)
    time.sleep(0.5)
    server.log_path.rmdir()
    send(server.port("smtp"), "alice@example.org", "later")
    wait_until(lambda: server.log_path.is_file() and
               "event=accepted" in server.log_path.read_text())
    assert server.stop() == 0
    stderr = "\n".join(server.stderr_lines)
    assert "cannot write the log" in stderr
    assert "event=accepted" in stderr              # the line that found no file went here


def test_check_warns_when_the_mail_user_cannot_write_the_log(tmp_path):
    ini = write_server_config(tmp_path, server="user = nobody")
    ini.chmod(0o600)
    assert any("[server] log: nobody cannot write" in w for w in check_warnings(ini))



@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run sendmail as another user")
def test_sendmail_by_a_user_who_cannot_write_the_queue_goes_through_smtp(public_folder):
    port = free_port()
    server = new_server(public_folder, python=SYSTEM_PYTHON,
                        listen={"smtp": f"127.0.0.1:{port}"})
    ini = server.ini
    ini.chmod(0o644)
    server.start()                                   # as root: data_dir is root's, 0700
    try:
        assert stat.S_IMODE(server.data.stat().st_mode) == 0o700
        result = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             SYSTEM_PYTHON, str(SCRIPT), "-c", str(ini), "sendmail", "-v", "alice@example.org"],
            input="Subject: from nobody\n\nhello\n", capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"the server at 127.0.0.1:{port}" in result.stdout
        wait_until(lambda: len(server.messages("alice")) == 1)
        (message,) = server.messages("alice")
        assert b"Subject: from nobody" in message and b"\nFrom: nobody@" in message
    finally:
        assert server.stop() == 0
