"""Operations as a home admin meets them: which config a command uses, sendmail
for every user, start and reload failures that reach the admin, a data_dir
that is the server's own, and the small things a user trips over."""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.config import schema as config_module
from lib.config.router import LOCAL, Router
from lib.core.addresses import Address

from ..helpers.cli import ROOT, SCRIPT
from ..helpers.ini import HASH
from ..helpers.server import ServerProcess, server_config
from ..helpers.tls import make_certificate

SYSTEM_PYTHON = "/usr/bin/python3"          # readable by every user, unlike a pyenv under /root
ENV_KEYS = ("MAILBOX_APPLIANCE_CONFIG", "MAILBOX_APPLIANCE_SYSTEM_CONFIG",
            "MAILBOX_APPLIANCE_SMTP")
NO_SYSTEM_CONFIG = "/nonexistent/mailbox_appliance.ini"
NOBODY = pwd.getpwnam("nobody")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without our variables; no system config either
    (one installed on this machine must not stand in for the test's)."""
    env = {key: value for key, value in os.environ.items() if key not in ENV_KEYS}
    env["MAILBOX_APPLIANCE_SYSTEM_CONFIG"] = NO_SYSTEM_CONFIG
    env.update(extra)
    return env


def cli(*args, env=None, script=SCRIPT, python=sys.executable, stdin=None, as_user=None,
        timeout=60) -> subprocess.CompletedProcess:
    command = [python, str(script), *args]
    if as_user is not None:
        group = grp.getgrgid(as_user.pw_gid).gr_name
        command = ["setpriv", f"--reuid={as_user.pw_name}", f"--regid={group}",
                   "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, timeout=timeout,
                          env=env if env is not None else clean_env(), input=stdin,
                          text=stdin is None or isinstance(stdin, str))


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def send(port: int, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("sender@example.com", [to], f"Subject: {subject}\r\n\r\nbody\r\n")


@pytest.fixture
def installed(public_folder) -> Path:
    """The script as the README installs it: a copy under <root>/opt, readable by all."""
    home = public_folder / "opt" / "mailbox-appliance"
    home.mkdir(parents=True)
    shutil.copy2(SCRIPT, home / "mailbox_appliance.py")
    shutil.copytree(ROOT / "lib", home / "lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder, _dirs, files in os.walk(public_folder):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return home / "mailbox_appliance.py"


def hostname_line(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("hostname:"))


# ---------------------------------------------------------------- which config

def test_config_search_order_is_c_then_env_then_system_then_demo(tmp_path):
    made = {}
    for name in ("given", "env", "system"):
        made[name] = tmp_path / f"{name}.ini"
        made[name].write_text(server_config(tmp_path).replace(
            "hostname = mail.example.org", f"hostname = {name}.example.org"))
    everything = clean_env(MAILBOX_APPLIANCE_CONFIG=str(made["env"]),
                           MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(made["system"]))
    result = cli("-c", str(made["given"]), "check", env=everything)
    assert "given.example.org" in hostname_line(result)
    assert "config:     given with -c" in result.stdout
    result = cli("check", env=everything)
    assert "env.example.org" in hostname_line(result)
    assert "from $MAILBOX_APPLIANCE_CONFIG" in result.stdout
    result = cli("check", env=clean_env(MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(made["system"])))
    assert "system.example.org" in hostname_line(result)
    assert "config:     the system config" in result.stdout
    result = cli("check", env=clean_env(MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(tmp_path / "no")))
    assert result.stdout.startswith(f"{ROOT / 'conf' / 'mailbox_appliance.ini'}: OK")
    assert f"the localhost demo next to the script: {tmp_path / 'no'} does not exist" \
        in result.stdout


def test_serve_says_in_its_first_log_line_which_config_it_found(tmp_path):
    ini = tmp_path / "system.ini"
    ini.write_text(server_config(tmp_path))
    process = subprocess.Popen([sys.executable, str(SCRIPT), "serve"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=clean_env(MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(ini)))
    try:
        assert process.stdout.readline().startswith("listening smtp 127.0.0.1:")
        log = wait_for(lambda: (tmp_path / "server.log").exists()
                       and (tmp_path / "server.log").read_text(), "the log")
        first = log.splitlines()[0]
        assert "event=starting" in first and f"config={ini}" in first
        assert 'found="the system config"' in first
    finally:
        process.terminate()
        process.wait(20)


def test_errors_name_the_ini_by_its_absolute_path(tmp_path):
    (tmp_path / "bad.ini").write_text("[server]\nhostname = a.example\nbogus = 1\n")
    result = subprocess.run([sys.executable, str(SCRIPT), "-c", "bad.ini", "check"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path / 'bad.ini'} line 3: [server] bogus:")


# ---------------------------------------------------------------- sendmail for every user

def test_sendmail_by_a_user_who_cannot_read_the_ini_goes_over_smtp(public_folder, installed,
                                                                   servers):
    server = servers()
    server.ini.chmod(0o600)                   # root's, as the README's 640 root:mail is
    result = cli("sendmail", "-f", "cron@example.org", "alice@example.org",
                 script=installed, python=SYSTEM_PYTHON, as_user=NOBODY,
                 env=clean_env(MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(server.ini),
                               MAILBOX_APPLIANCE_SMTP=f"127.0.0.1:{server.port('smtp')}"),
                 stdin=b"Subject: from cron\n\nnightly report\n")
    assert result.returncode == 0, result.stderr
    [message] = wait_for(lambda: server.messages("alice"), "the message in alice's Maildir")
    assert b"Subject: from cron" in message and b"nightly report" in message


def test_sendmail_without_the_ini_or_a_server_says_what_it_tried(public_folder, installed,
                                                                 tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    port = free_port()                        # nothing listens there
    result = cli("-c", str(ini), "sendmail", "alice@example.org", script=installed,
                 python=SYSTEM_PYTHON, as_user=NOBODY,
                 env=clean_env(MAILBOX_APPLIANCE_SMTP=f"127.0.0.1:{port}"),
                 stdin=b"Subject: x\n\nbody\n")
    assert result.returncode == 1
    error = result.stderr.decode()
    assert error.startswith(f"sendmail: cannot read {ini}, and no server took the message")
    assert f"127.0.0.1:{port}" in error and "MAILBOX_APPLIANCE_SMTP" in error
    assert len(error.strip().splitlines()) == 1


# ---------------------------------------------------------------- root's mail

def test_check_warns_when_root_reaches_no_mailbox(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path).replace("root = bhayden\n", ""))
    result = cli("-c", str(ini), "check")
    assert result.returncode == 0
    assert "warning: root@example.org reaches no mailbox" in result.stdout
    ini.write_text(server_config(tmp_path))
    assert "root@" not in cli("-c", str(ini), "check").stdout


@pytest.mark.parametrize("name", ["example-home.ini", "mailbox_appliance.ini"])
def test_shipped_configs_give_root_abuse_and_mailer_daemon_a_mailbox(name):
    config = config_module.load(ROOT / "conf" / name, tls_files=False)
    router = Router(config)
    for local in ("root", "abuse", "MAILER-DAEMON", "postmaster"):
        resolution = router.resolve(Address(local, router.primary_domain))
        assert resolution.result == LOCAL, (local, resolution.reason)


def test_route_takes_a_bare_name_as_cron_sends_it(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    result = cli("-c", str(ini), "route", "root")
    assert result.stdout.startswith("root -> local: delivered to mailbox bhayden: alias root")


# ---------------------------------------------------------------- the SysV script

@pytest.fixture
def sysv(tmp_path):
    """service(action) runs init/mailbox-appliance on a config of the test's own."""
    ini = tmp_path / "server.ini"
    port = free_port()
    ini.write_text(server_config(tmp_path, listen={"smtp": f"127.0.0.1:{port}"}))
    env = clean_env(PYTHON=sys.executable, DAEMON=str(SCRIPT), CONFIG=str(ini),
                    PIDFILE=str(tmp_path / "run" / "server.pid"),
                    OUTPUT=str(tmp_path / "server.out"), STOP_TIMEOUT="20", START_TIMEOUT="15")

    def service(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(ROOT / "init" / "mailbox-appliance"), action],
                              capture_output=True, text=True, timeout=90, env=env)

    service.ini, service.port = ini, port
    yield service
    service("stop")


def test_sysv_start_prints_why_the_server_did_not_start(sysv):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", sysv.port))
        squatter.listen()
        result = sysv("start")
    assert result.returncode == 1
    assert result.stderr.startswith("mailbox-appliance did not start: serve: [listen] smtp: "
                                    f"cannot listen on 127.0.0.1:{sysv.port}")
    assert "Address already in use" in result.stderr


def test_sysv_restart_checks_the_ini_before_stopping_a_working_server(sysv):
    assert sysv("start").returncode == 0
    pid = int(Path(sysv.ini.parent / "run" / "server.pid").read_text())
    good = sysv.ini.read_text()
    sysv.ini.write_text(good + "\n[limits]\nmax_recipents = 5\n")
    result = sysv("restart")
    assert result.returncode == 1
    assert result.stderr.startswith("mailbox-appliance not restarted (still running the old "
                                    "config): ")
    assert "[limits] max_recipents: unknown key; did you mean max_recipients?" in result.stderr
    assert os.path.exists(f"/proc/{pid}")
    send(sysv.port, "alice@example.org", "still up")
    sysv.ini.write_text(good)
    restarted = sysv("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert int(Path(sysv.ini.parent / "run" / "server.pid").read_text()) != pid


def test_sysv_reload_prints_the_servers_answer(sysv):
    assert sysv("start").returncode == 0
    sysv.ini.write_text(sysv.ini.read_text() + "\n[limits]\nmax_recipents = 5\n")
    result = sysv("reload")
    assert result.returncode == 1
    assert result.stderr.startswith("reload failed, the running config stays: ")
    assert "[limits] max_recipents: unknown key; did you mean max_recipients?" in result.stderr


# ---------------------------------------------------------------- reload and status

def test_reload_prints_applied_or_the_error_and_status_finds_the_server(servers):
    server = servers()
    status = cli("-c", str(server.ini), "status")
    assert status.returncode == 0 and f"pid {server.process.pid}" in status.stdout
    server.ini.write_text(server.ini.read_text().replace("alice = ", f"carol = {HASH}\nalice = "))
    applied = cli("-c", str(server.ini), "reload")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith(f"reloaded: {server.ini}: 2 domains, 3 mailboxes")
    send(server.port(), "carol@example.org", "after reload")
    server.ini.write_text(server.ini.read_text() + "\n[limits]\nbogus = 1\n")
    refused = cli("-c", str(server.ini), "reload")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("reload failed, the running config stays: ")
    assert "[limits] bogus: unknown key" in refused.stderr
    send(server.port(), "carol@example.org", "old config still serves")
    assert len(server.messages("carol")) == 2
    server.stop()
    gone = cli("-c", str(server.ini), "status")
    assert gone.returncode == 3 and gone.stdout.startswith("not running")
    assert cli("-c", str(server.ini), "reload").returncode == 1


def as_nobody_server(folder: Path, extra: str = "", tls=None) -> ServerProcess:
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, NOBODY.pw_uid, NOBODY.pw_gid)
    ini = folder / "server.ini"
    ini.write_text(server_config(folder, tls=tls)
                   .replace("log_level = debug", "log_level = debug\nuser = nobody" + extra)
                   .replace(f"log = {folder / 'server.log'}", f"log = {logs / 'server.log'}"))
    os.chown(ini, 0, NOBODY.pw_gid)
    ini.chmod(0o640)                          # as the README says: root:<mail group> 640
    return ServerProcess(folder=folder, ini=ini, python=SYSTEM_PYTHON)


def test_reload_names_a_key_the_mail_user_cannot_read(public_folder):
    tls = public_folder / "tls"
    cert, key = make_certificate(tls)
    for path in (tls, cert):
        path.chmod(0o755 if path.is_dir() else 0o644)
    server = as_nobody_server(public_folder, tls=(cert, key))
    os.chown(key, 0, NOBODY.pw_gid)
    key.chmod(0o640)
    server.start()
    try:
        key.chmod(0o600)                      # what an old gencert left: root:root 0600
        os.chown(key, 0, 0)
        warned = cli("-c", str(server.ini), "check")
        assert f"[tls] key: nobody cannot read {key}" in warned.stdout
        result = cli("-c", str(server.ini), "reload")
        assert result.returncode == 1
        assert result.stderr.strip().endswith(f"[tls] key: cannot read {key}: Permission denied")
        assert "[tls] cert" not in result.stderr
    finally:
        server.stop()


def test_gencert_run_by_root_shares_the_key_with_the_mail_users_group(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path).replace("log_level = debug",
                                                 "log_level = debug\nuser = nobody"))
    result = cli("-c", str(ini), "gencert", "--out", str(tmp_path / "tls"))
    assert result.returncode == 0, result.stderr
    key = (tmp_path / "tls" / "key.pem").stat()
    assert stat.S_IMODE(key.st_mode) == 0o640
    assert (key.st_uid, key.st_gid) == (0, NOBODY.pw_gid)


# ---------------------------------------------------------------- the log

def run_serve_briefly(ini: Path, wrap: list[str] | None = None) -> tuple[str, str]:
    """Start serve, wait for its listeners, stop it; (stdout, stderr)."""
    process = subprocess.Popen([*(wrap or []), sys.executable, str(SCRIPT), "-c", str(ini),
                                "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=clean_env())
    try:
        first = process.stdout.readline()
        assert first.startswith("listening "), process.stderr.read()
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    return first + out, err


def test_syslog_without_a_syslog_daemon_falls_back_to_stderr(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path).replace(f"log = {tmp_path / 'server.log'}",
                                                 "log = syslog"))
    # Hide a running syslog's socket, if this machine has one, in a mount namespace.
    wrap = ["unshare", "--mount", "sh", "-c", 'mount --bind /dev/null /dev/log && exec "$@"',
            "-"] if os.path.exists("/dev/log") else None
    _, err = run_serve_briefly(ini, wrap)
    assert "error comp=daemon event=log_unavailable key=\"[server] log\"" in err
    assert "/dev/log" in err and "using=stderr" in err
    assert "event=started" in err                # the lines reach the init system


def test_log_file_is_not_readable_by_everyone(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    old = os.umask(0o022)                        # the SysV script's umask
    try:
        run_serve_briefly(ini)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "server.log").stat().st_mode) == 0o640


# ---------------------------------------------------------------- data_dir

def test_a_data_dir_holding_other_things_is_refused_and_left_alone(tmp_path):
    data = tmp_path / "data"
    (data / "backups").mkdir(parents=True)
    (data / "www").mkdir()
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    checked = cli("-c", str(ini), "check")
    assert checked.returncode == 2
    assert "[server] data_dir: " in checked.stderr and "(backups, www)" in checked.stderr
    served = cli("-c", str(ini), "serve")
    assert served.returncode == 1
    assert served.stderr.startswith(f"serve: [server] data_dir: {data} holds things that are "
                                    "not the server's (backups, www)")
    assert sorted(p.name for p in data.iterdir()) == ["backups", "www"]


@pytest.mark.parametrize("folder", ["/", "/var/lib", "/srv"])
def test_a_system_folder_is_never_a_data_dir(tmp_path, folder):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path).replace(f"data_dir = {tmp_path / 'data'}",
                                                 f"data_dir = {folder}"))
    for command in ("check", "serve"):
        result = cli("-c", str(ini), command)
        assert result.returncode in (1, 2)
        assert "[server] data_dir: " in result.stderr and "is a system folder" in result.stderr


def test_serve_as_root_gives_the_mail_user_only_what_is_the_servers(public_folder):
    data = public_folder / "data"
    (data / "mail" / "alice" / "new").mkdir(parents=True)     # made by root earlier
    (data / "lost+found").mkdir()
    server = as_nobody_server(public_folder)
    server.start()
    try:
        for path in (data, data / "mail", data / "mail" / "alice" / "new", data / "serve.lock"):
            assert path.stat().st_uid == NOBODY.pw_uid, path
        assert (data / "lost+found").stat().st_uid == 0
    finally:
        server.stop()


def test_a_second_server_on_the_same_data_dir_is_refused_naming_the_first(servers, tmp_path):
    first = servers()
    second_ini = tmp_path / "second.ini"
    second_ini.write_text(first.ini.read_text())
    result = cli("-c", str(second_ini), "serve")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"serve: [server] data_dir: {first.data} is in use by another running server "
        f"(pid {first.process.pid}); stop it first, or give this one a data_dir of its own")


def test_a_taken_port_names_the_running_server_and_its_pid_file_goes_at_exit(servers, tmp_path):
    port = free_port()
    pid_file = tmp_path / "run" / "mailbox.pid"
    first = servers(listen={"smtp": f"127.0.0.1:{port}"}, server=f"pid_file = {pid_file}")
    other = tmp_path / "other"
    other.mkdir()
    ini = other / "server.ini"
    ini.write_text(server_config(other, listen={"smtp": f"127.0.0.1:{port}"}))
    result = cli("-c", str(ini), "serve", "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"(the mailbox_appliance server with pid {first.process.pid}, from {pid_file}, " \
           "runs)" in result.stderr
    assert first.stop() == 0
    assert not pid_file.exists()


def test_a_read_only_data_dir_is_named_by_check_and_serve(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    mounted = ["unshare", "--mount", "sh", "-c",
               f'mount -t tmpfs -o ro tmpfs {data} && exec "$@"', "-"]
    for command, code in (("check", 2), ("serve", 1)):
        result = subprocess.run([*mounted, sys.executable, str(SCRIPT), "-c", str(ini), command],
                                capture_output=True, text=True, timeout=60, env=clean_env())
        assert result.returncode == code, result.stderr
        assert "[server] data_dir: " in result.stderr
        assert "read-only file system" in result.stderr
        assert "Traceback" not in result.stderr and "Errno" not in result.stderr


# ---------------------------------------------------------------- small things

def test_check_into_a_closed_pipe_is_quiet(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path))
    result = subprocess.run(f"{sys.executable} {SCRIPT} -c {ini} check | head -1", shell=True,
                            capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.stdout.startswith(f"{ini}: OK")
    assert result.stderr == ""


def test_a_hash_written_with_a_colon_says_use_equals(tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(server_config(tmp_path).replace(f"alice = {HASH}", f"alice: {HASH}"))
    result = cli("-c", str(ini), "check")
    assert result.returncode == 2
    assert "[mailboxes] alice: written with ':'; use '=' between the name and its value" \
        in result.stderr


def test_readme_stands_alone():
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    assert "pidof" not in text


# ---------------------------------------------------------------- the README's install, walked

def test_the_readme_install_steps_in_a_scratch_root(public_folder, installed):
    """Steps 1-7 of "Installing on a home server" with the scratch root standing in
    for /: the copy in opt/, the INI in etc/, gencert, check, the SysV script,
    cron's sendmail (by a user who cannot read the INI), POP3, reload, stop."""
    scratch = public_folder
    etc = scratch / "etc" / "mailbox-appliance"
    etc.mkdir(parents=True)
    logs = scratch / "var" / "log" / "mailbox-appliance"
    logs.mkdir(parents=True)
    os.chown(logs, NOBODY.pw_uid, NOBODY.pw_gid)
    smtp, pop3 = free_port(), free_port()
    ini = etc / "mailbox_appliance.ini"
    text = (ROOT / "conf" / "example-home.ini").read_text()
    text = text.replace("data_dir = /var/lib/mailbox-appliance",
                        f"data_dir = {scratch / 'var' / 'lib' / 'mailbox-appliance'}")
    text = text.replace("user = mail ", "user = nobody ")
    text = text.replace("log = syslog ", f"log = {logs / 'mail.log'} ")
    text = text.replace("\n[relay]\n", "\n[relay]\nsrs_secret = 5ca1ab1e5ca1ab1e\n")  # a forward
    listen_start, listen_end = text.index("\n[listen]\n"), text.index("\n[tls]\n")
    listen = f"\n[listen]\nsmtp = 127.0.0.1:{smtp}\npop3 = 127.0.0.1:{pop3}\n\n"
    text = text[:listen_start] + listen + text[listen_end:]
    text = text.replace("/etc/letsencrypt/live/mail.hayden.example/fullchain.pem",
                        str(etc / "tls" / "cert.pem"))
    text = text.replace("/etc/letsencrypt/live/mail.hayden.example/privkey.pem",
                        str(etc / "tls" / "key.pem"))
    text = "\n".join(f"bhayden = {HASH}" if line.startswith("bhayden = $scrypt$") else line
                     for line in text.splitlines()) + "\n"
    ini.write_text(text)
    os.chown(ini, 0, NOBODY.pw_gid)
    ini.chmod(0o640)
    env = clean_env(MAILBOX_APPLIANCE_SYSTEM_CONFIG=str(ini))
    # step 2: the mail user's data_dir
    data_dir = scratch / "var" / "lib" / "mailbox-appliance"
    data_dir.mkdir(parents=True)
    os.chown(data_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    data_dir.chmod(0o700)
    # step 4: a self-signed certificate; step 5: check, without -c
    made = cli("gencert", script=installed, python=SYSTEM_PYTHON, env=env)
    assert made.returncode == 0, made.stderr
    (etc / "tls").chmod(0o755)
    checked = cli("check", script=installed, python=SYSTEM_PYTHON, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "config:     the system config" in checked.stdout
    assert [line for line in checked.stdout.splitlines() if line.startswith("warning")] == []
    # step 6: the SysV script
    service_env = {**env, "PYTHON": SYSTEM_PYTHON, "DAEMON": str(installed),
                   "CONFIG": str(ini), "PIDFILE": str(scratch / "run" / "mailbox-appliance"
                                                      / "mailbox-appliance.pid"),
                   "OUTPUT": str(scratch / "var" / "log" / "mailbox-appliance.out")}

    def service(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(ROOT / "init" / "mailbox-appliance"), action],
                              capture_output=True, text=True, timeout=90, env=service_env)

    started = service("start")
    assert started.returncode == 0, started.stderr
    try:
        # step 7: sendmail as cron runs it, for a user outside the mail group
        sbin = scratch / "usr" / "sbin"
        sbin.mkdir(parents=True)
        (sbin / "sendmail").symlink_to(installed)
        daemon_user = pwd.getpwnam("daemon")
        sent = cli("-i", "root", script=sbin / "sendmail", python=SYSTEM_PYTHON,
                   as_user=daemon_user, stdin=b"Subject: cron\n\nbackup done\n",
                   env={**env, "MAILBOX_APPLIANCE_SMTP": f"127.0.0.1:{smtp}"})
        assert sent.returncode == 0, sent.stderr
        client = poplib.POP3("127.0.0.1", pop3, timeout=20)
        try:
            # plaintext_auth = never, as the example has it: STLS first, with the
            # certificate gencert made (it names mail.hayden.example, not 127.0.0.1)
            context = ssl.create_default_context(cafile=str(etc / "tls" / "cert.pem"))
            context.check_hostname = False
            client.stls(context)
            client.user("bhayden")
            client.pass_("correct horse")
            count = wait_for(lambda: client.stat()[0], "root's mail in bhayden's mailbox")
            assert count == 1
            assert b"backup done" in b"\n".join(client.retr(1)[1])
        finally:
            client.quit()
        reloaded = service("reload")
        assert reloaded.returncode == 0 and reloaded.stdout.startswith("reloaded: "), reloaded
    finally:
        stopped = service("stop")
    assert stopped.returncode == 0
    assert not Path(service_env["PIDFILE"]).exists()
