"""The real mailbox_appliance.py run as a subprocess: check, route, passwd."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time

from lib.core import passwords

from ..helpers.cli import ROOT, SCRIPT, run_cli
from ..helpers.ini import ALIASES, config_text
from ..helpers.tls import make_certificate


def test_check_passes_on_the_default_config():
    result = run_cli("check")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mailbox_appliance.ini: OK" in out
    assert "example.org" in out and "example.net" in out
    assert "listeners:" in out and "smtp 127.0.0.1:2525" in out
    assert "relay:" in out


def test_check_on_the_production_example_only_misses_tls_files(tmp_path, certificate):
    result = run_cli("-c", str(ROOT / "conf" / "example-home.ini"), "check")
    assert result.returncode == 2
    assert "[tls] cert: file not found" in result.stderr
    # with certificate files present it passes as shipped otherwise
    cert, key = certificate
    text = (ROOT / "conf" / "example-home.ini").read_text()
    lines = [f"cert = {cert}" if line.startswith("cert =") else
             f"key = {key}" if line.startswith("key =") else line
             for line in text.splitlines()]
    (tmp_path / "home.ini").write_text("\n".join(lines))
    result = run_cli("-c", str(tmp_path / "home.ini"), "check")
    assert result.returncode == 0, result.stderr
    assert "domains:    7" in result.stdout and "mailboxes:  12" in result.stdout


def test_typo_in_a_key_fails_check_with_one_line(tmp_path):
    path = tmp_path / "typo.ini"
    path.write_text(config_text(limits="max_recipents = 10"))
    result = run_cli("-c", str(path), "check")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "[limits] max_recipents: unknown key" in lines[0]
    assert f"{path} line " in lines[0]
    assert "Traceback" not in result.stderr


def test_config_from_environment(tmp_path):
    path = tmp_path / "env.ini"
    path.write_text(config_text(listen={"smtp": "127.0.0.1:2525"}))
    result = run_cli("check", env={"MAILBOX_APPLIANCE_CONFIG": str(path)})
    assert result.returncode == 0 and str(path) in result.stdout


def test_config_option_after_the_command(tmp_path):
    path = tmp_path / "after.ini"
    path.write_text(config_text(listen={"smtp": "127.0.0.1:2525"}))
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0 and str(path) in result.stdout


def test_missing_config_is_exit_2(tmp_path):
    result = run_cli("-c", str(tmp_path / "none.ini"), "check")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_bad_usage_is_exit_2():
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("route").returncode == 2


def test_route_plain_text_explains():
    result = run_cli("route", "BHayden+lists@Example.NET", "sales@example.net",
                     "nobody@example.org", "x@gmail.example", "foo@example.net",
                     "not an@address@")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("BHayden+lists@Example.NET -> local: delivered to mailbox bhayden")
    assert "recipient_delimiter" in lines[0]
    assert lines[1].startswith("sales@example.net -> local: delivered to mailboxes alice, bhayden")
    assert lines[2].startswith("nobody@example.org -> rejected:") and "550 5.1.1" in lines[2]
    assert lines[3].startswith("x@gmail.example -> remote:")
    assert "catch-all @example.net" in lines[4]
    assert lines[5].startswith("not an@address@ -> rejected: not an address")


def test_route_json_one_object_per_line():
    result = run_cli("route", "--json", "BHayden+lists@Example.NET", "sales@example.net",
                 "nobody@example.org", "x@gmail.example", "postmaster@example.org")
    assert result.returncode == 0
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(o) for o in objects] == [{"address", "result", "mailboxes", "forward",
                                          "reason"}] * 5
    assert objects[0]["address"] == "BHayden+lists@Example.NET"
    assert (objects[0]["result"], objects[0]["mailboxes"]) == ("local", ["bhayden"])
    assert objects[1]["mailboxes"] == ["alice", "bhayden"]
    assert objects[2]["result"] == "rejected" and objects[2]["mailboxes"] == []
    assert objects[3]["result"] == "remote" and objects[3]["forward"] == ["x@gmail.example"]
    assert objects[4]["mailboxes"] == ["bhayden"]
    assert all(o["reason"] for o in objects)


def test_route_forward_in_json(tmp_path):
    path = tmp_path / "fwd.ini"
    path.write_text(config_text(aliases=ALIASES + "old = bhayden, bhayden@gmail.example"))
    result = run_cli("-c", str(path), "route", "--json", "old@example.org")
    data = json.loads(result.stdout)
    assert data["result"] == "local"
    assert data["mailboxes"] == ["bhayden"] and data["forward"] == ["bhayden@gmail.example"]


def test_route_with_broken_config_is_exit_2(tmp_path):
    path = tmp_path / "loop.ini"
    path.write_text(config_text(aliases=ALIASES + "a = b@example.org\nb = a@example.org"))
    result = run_cli("-c", str(path), "route", "a@example.org")
    assert result.returncode == 2
    assert "[aliases] a: alias loop" in result.stderr


def test_passwd_from_stdin_prints_a_verifiable_hash():
    result = run_cli("passwd", stdin="s3cret pass\n")
    assert result.returncode == 0
    line = result.stdout.strip()
    assert passwords.verify("s3cret pass", line)
    assert not passwords.verify("s3cret", line)


def test_passwd_refuses_empty_input():
    result = run_cli("passwd", stdin="\n")
    assert result.returncode == 2 and "empty password" in result.stderr


def _run_on_tty(args, answers):
    """Run the script on a pseudo-terminal, answering each prompt; return (rc, output)."""
    pid, fd = pty.fork()
    if pid == 0:      # child
        os.execv(sys.executable, [sys.executable, str(SCRIPT), *args])
    output = b""
    deadline = time.monotonic() + 30
    pending = list(answers)
    answered_at = 0        # answer only a prompt that appeared after the last answer:
    # getpass flushes typed-ahead input (TCSAFLUSH) when it shows a prompt
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if pending and output[answered_at:].rstrip().endswith(b":"):
            os.write(fd, pending.pop(0).encode() + b"\n")
            output += b"\n"
            answered_at = len(output)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passwd_on_a_tty_asks_twice():
    rc, output = _run_on_tty(["passwd"], ["tty secret", "tty secret"])
    assert rc == 0, output
    assert "New password:" in output and "Repeat it:" in output
    hash_line = [line for line in output.splitlines() if line.startswith("$scrypt$")][0]
    assert passwords.verify("tty secret", hash_line.strip())


def test_passwd_on_a_tty_with_different_answers_fails():
    rc, output = _run_on_tty(["passwd"], ["one", "two"])
    assert rc == 1 and "differ" in output and "$scrypt$" not in output


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[server]\nbogus = 1\n")
    plain = run_cli("-c", str(path), "check")
    debug = run_cli("-c", str(path), "--debug", "check")
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert plain.returncode == debug.returncode == 2


def test_unusable_certificate_is_a_config_error(tmp_path, certificate):
    (tmp_path / "junk.pem").write_text("not a certificate")
    path = tmp_path / "tls.ini"
    path.write_text(config_text(tls=f"cert = {tmp_path / 'junk.pem'}"))
    result = run_cli("-c", str(path), "check")
    assert result.returncode == 2 and "[tls] cert: cannot load" in result.stderr
    other_cert, other_key = make_certificate(tmp_path / "other")
    path.write_text(config_text(tls=(certificate[0], other_key)))
    result = run_cli("-c", str(path), "check")
    assert result.returncode == 2 and "[tls] key: " in result.stderr
    assert "does not belong" in result.stderr


def test_queue_remove_refuses_what_is_not_a_queue_id(tmp_path):
    path = tmp_path / "q.ini"
    path.write_text(config_text())
    victim = tmp_path / "victim.env"
    victim.write_text("must survive")
    result = run_cli("-c", str(path), "queue", "remove", "../../victim")
    assert result.returncode == 2 and "not a queue id" in result.stderr
    assert victim.exists()


def test_sendmail_without_recipients_is_bad_usage(tmp_path):
    path = tmp_path / "s.ini"
    path.write_text(config_text())
    result = run_cli("-c", str(path), "sendmail", "-i", stdin="Subject: x\n\nbody\n")
    assert result.returncode == 2 and "no recipients" in result.stderr


def test_gencert_works_before_the_files_it_makes_exist(tmp_path):
    path = tmp_path / "g.ini"
    path.write_text(config_text(tls="cert = tls/cert.pem\nkey = tls/key.pem",
                                listen={"smtp": "127.0.0.1:2525"}))
    assert run_cli("-c", str(path), "check").returncode == 2          # the files are missing
    made = run_cli("-c", str(path), "gencert")
    assert made.returncode == 0, made.stderr
    assert run_cli("-c", str(path), "check").returncode == 0
