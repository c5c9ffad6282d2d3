"""Screening strangers' mail (DESIGN 7.1) through the real server: a DNS server of
the tests' own serving blocklists, SPF, DKIM keys and DMARC policies; the real
spamd, rspamd and clamd; stranger clients on 127.0.0.1/127.0.0.2 (loopback is
not trusted here), and the same message from recognised senders."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from ..helpers.checks import dkim_key, make_key_pem
from ..helpers.cli import SCRIPT
from ..helpers.daemons import EICAR, GTUBE
from ..helpers.ini import PASSWORD
from ..helpers.net import HOST
from ..helpers.server import ServerProcess
from ..helpers.waiting import wait_until

STRANGER = "127.0.0.1"           # not in trusted_networks below
LISTED = "127.0.0.2"             # the RFC 5782 test point: the one address a list is asked about
TRUSTED_NETWORKS = "192.168.77.0/24"


def plain(subject: str = "hello", author: str = "Friend <friend@good.test>",
          extra: str = "", body: str = "Just a note.\r\n") -> bytes:
    return (f"From: {author}\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.time()}@good.test>\r\n"
            f"{extra}\r\n{body}").encode()


def start(servers, dns, checks: str, name: str = "server", trusted: str = TRUSTED_NETWORKS,
          **options) -> ServerProcess:
    return servers(name, trusted=trusted,
                   limits="greet_pause = 0\nerror_sleep = 0",
                   relay=f"nameservers = {HOST}:{dns.port}",
                   extra=f"\n[checks]\n{checks}\n", **options)


def attempt(server: ServerProcess, message: bytes, *, sender: str = "friend@good.test",
            recipients: tuple[str, ...] = ("alice@example.org",), source: str = STRANGER,
            login: bool = False, port_kind: str = "smtp") -> tuple[int, str]:
    """One transaction; the first refusal's (code, text), or (250, text) of DATA."""
    with smtplib.SMTP(HOST, server.port(port_kind), timeout=30,
                      source_address=(source, 0), local_hostname="mx.good.test") as client:
        client.ehlo()
        if login:
            client.login("bhayden", PASSWORD)
        code, text = client.mail(sender)
        if code != 250:
            return code, text.decode()
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code != 250:
                return code, text.decode()
        try:
            code, text = client.data(message)
        except smtplib.SMTPDataError as error:
            return error.smtp_code, error.smtp_error.decode()
        return code, text.decode()


def checks_logged(server: ServerProcess, expect: str | None = None) -> list[str]:
    """The log's check lines (once `expect` shows up in the log: it is written by a
    thread of its own, a moment after the reply)."""
    if expect is not None:
        server.wait_for_log(expect)
    else:
        time.sleep(0.3)
    return [line for line in server.log_text().splitlines() if "event=check " in line]


def screen(server: ServerProcess, message: bytes, *args: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "-c", str(server.ini), "screen",
                           "--json", *args], input=message, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


# ---------------------------------------------------------------- DNSBL

def test_a_listed_client_is_refused_at_rcpt_naming_the_list(servers, dns):
    dns.a("2.0.0.127.bl.test", "127.0.0.2")
    dns.txt("2.0.0.127.bl.test", "listed for testing, see https://bl.test/")
    server = start(servers, dns, "dnsbl = bl.test")
    code, text = attempt(server, plain(), source=LISTED)
    assert code == 554 and text.startswith("5.7.1 Service unavailable; client [127.0.0.2] "
                                           "blocked using bl.test")
    assert "listed for testing" in text
    [line] = [line for line in checks_logged(server, "check=dnsbl") if "check=dnsbl" in line]
    assert "result=listed" in line
    # asked once per session: a second RCPT in the same session asks no more
    assert sum(1 for q in dns.queries if q[0].endswith("bl.test")) <= 2


def test_the_lists_own_error_codes_and_a_dead_list_refuse_nothing(servers, dns):
    dns.a("2.0.0.127.bl.test", "127.255.255.254")          # "query refused" by the list
    dns.silent.add("2.0.0.127.dead.test")
    server = start(servers, dns, "dnsbl = bl.test, dead.test")
    code, _ = attempt(server, plain(), source=LISTED)
    assert code == 250
    [line] = [line for line in checks_logged(server, "check=dnsbl") if "check=dnsbl" in line]
    assert "warning" in line and "result=error" in line


# ---------------------------------------------------------------- SPF

def test_spf_reject_refuses_fail_at_mail_and_tags_softfail(servers, dns):
    dns.txt("bad.test", "v=spf1 ip4:192.0.2.1 -all")
    dns.txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all")
    server = start(servers, dns, "spf = reject")
    code, text = attempt(server, plain(), sender="x@bad.test")
    assert code == 550 and text.startswith("5.7.23 SPF check failed")
    code, _ = attempt(server, plain(subject="soft"), sender="x@soft.test")
    assert code == 250
    [stored] = server.messages("alice")
    assert b"Authentication-Results: mail.example.org;\n\tspf=softfail smtp.mailfrom=soft.test" \
        in stored


def test_spf_temperror_is_a_451_with_reject(servers, dns):
    dns.servfail.add("broken.test")
    server = start(servers, dns, "spf = reject")
    code, text = attempt(server, plain(), sender="x@broken.test")
    assert code == 451 and text.startswith("4.7.24")


# ---------------------------------------------------------------- DKIM and DMARC

@pytest.fixture(scope="module")
def good_key(tmp_path_factory):
    return dkim_key(make_key_pem(tmp_path_factory.mktemp("dkim")), "good.test", "sel")


def test_dmarc_reject_refuses_an_unaligned_message_and_passes_a_signed_one(servers, dns,
                                                                           good_key):
    dns.txt("_dmarc.good.test", "v=DMARC1; p=reject")
    dns.txt("good.test", "v=spf1 ip4:192.0.2.1 -all")          # SPF fails for us
    dns.txt(good_key.name, good_key.record)
    server = start(servers, dns, "spf = tag\ndmarc = reject")
    code, text = attempt(server, plain(), sender="x@good.test")
    assert code == 550 and "DMARC policy of good.test" in text
    assert server.messages("alice") == []
    signed = good_key.sign(plain(subject="signed"))
    code, _ = attempt(server, signed, sender="x@good.test")
    assert code == 250
    [stored] = server.messages("alice")
    assert b"\tdkim=pass header.d=good.test" in stored and b"\tdmarc=pass" in stored
    # what screen says of the unsigned one is what serve did
    lines = screen(server, plain(), "--client", STRANGER, "--from", "x@good.test",
                   "--to", "alice@example.org")
    assert lines[-1]["code"] == 550
    assert [line["check"] for line in lines[:-1]] == ["spf", "dkim", "dmarc"]


def test_dmarc_quarantine_delivers_to_junk(servers, dns):
    dns.txt("_dmarc.q.test", "v=DMARC1; p=quarantine")
    server = start(servers, dns, "dmarc = reject")
    code, _ = attempt(server, plain(author="a@q.test"), sender="a@q.test")
    assert code == 250
    assert server.messages("alice") == []
    junk = server.data / "mail" / "alice" / ".Junk" / "new"
    assert len(list(junk.iterdir())) == 1
    server.wait_for_log("folder=Junk")


def test_a_forged_authentication_results_of_ours_is_removed_others_kept(servers, dns):
    server = start(servers, dns, "spf = tag")
    forged = plain(extra="Authentication-Results: mail.example.org; spf=pass "
                         "smtp.mailfrom=bank.test\r\n"
                         "Authentication-Results: other.test; dkim=pass\r\n")
    assert attempt(server, forged)[0] == 250
    [stored] = server.messages("alice")
    assert stored.count(b"Authentication-Results: mail.example.org") == 1
    assert b"smtp.mailfrom=bank.test" not in stored
    assert b"Authentication-Results: other.test; dkim=pass" in stored


# ---------------------------------------------------------------- greylisting

def test_greylisting_defers_then_accepts_and_remembers_across_a_restart(servers, dns):
    server = start(servers, dns, "greylist = on\ngreylist_delay = 1s")
    code, text = attempt(server, plain())
    assert code == 451 and text.startswith("4.7.1 Greylisted")
    wait_until(lambda: attempt(server, plain(subject="retry"))[0] == 250, timeout=10,
               interval=0.5, what="the retried triplet accepted after greylist_delay")
    server.stop()
    server.start()
    assert attempt(server, plain(subject="after restart"))[0] == 250
    other = attempt(server, plain(), recipients=("bhayden@example.org",))
    assert other[0] == 451                          # a new triplet is still greylisted


# ---------------------------------------------------------------- scanners

def test_spamd_refuses_gtube_or_tags_it_into_junk(servers, dns, spamd_daemon):
    spam = plain(subject="buy", body=f"{GTUBE}\r\n")
    refusing = start(servers, dns, f"spamd = 127.0.0.1:{spamd_daemon.port}", name="refusing")
    assert attempt(refusing, spam)[0] == 550
    tagging = start(servers, dns, f"spamd = 127.0.0.1:{spamd_daemon.port}\n"
                                  "spam_reject_score = 5000", name="tagging")
    assert attempt(tagging, spam)[0] == 250
    [stored] = [p.read_bytes() for p in
                (tagging.data / "mail" / "alice" / ".Junk" / "new").iterdir()]
    assert b"X-Spam-Flag: YES\n" in stored and b"X-Spam-Status: Yes, score=" in stored
    assert attempt(tagging, plain(extra="X-Spam-Flag: YES\r\n"))[0] == 250
    [ham] = tagging.messages("alice")
    assert b"X-Spam-Flag" not in ham and b"X-Spam-Status: No" in ham


def test_rspamd_refuses_gtube(servers, dns, rspamd_daemon):
    server = start(servers, dns, f"rspamd = http://127.0.0.1:{rspamd_daemon.port}")
    assert attempt(server, plain(body=f"{GTUBE}\r\n"))[0] == 550
    assert attempt(server, plain(subject="fine"))[0] == 250


def test_clamd_refuses_eicar_naming_it(servers, dns, clamd_daemon):
    server = start(servers, dns, f"clamd = {clamd_daemon.socket_path}")
    code, text = attempt(server, plain(body=f"{EICAR}\r\n"))
    assert code == 554 and "Eicar-Test-Signature" in text
    assert attempt(server, plain(subject="clean"))[0] == 250


def test_a_dead_scanner_tempfails_or_is_passed_over_as_configured(servers, dns):
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        dead = probe.getsockname()[1]
    failing = start(servers, dns, f"clamd = 127.0.0.1:{dead}", name="tempfail")
    code, text = attempt(failing, plain())
    assert code == 451 and "could not be scanned" in text
    lenient = start(servers, dns, f"clamd = 127.0.0.1:{dead}\nscanner_failure = accept",
                    name="accept")
    assert attempt(lenient, plain())[0] == 250
    assert any("warning" in line and "check=clamd" in line
               for line in checks_logged(lenient, "check=clamd"))


# ---------------------------------------------------------------- recognised senders

def test_recognised_senders_skip_every_check(servers, dns, spamd_daemon):
    dns.a("1.0.0.127.bl.test", "127.0.0.2")
    spam = plain(subject="our own", body=f"{GTUBE}\r\n")
    server = start(servers, dns, f"dnsbl = bl.test\nspf = reject\ngreylist = on\n"
                                 f"spamd = 127.0.0.1:{spamd_daemon.port}",
                   listen={"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0"},
                   trusted="127.0.0.1/32")
    assert attempt(server, spam, source="127.0.0.1")[0] == 250            # trusted network
    assert attempt(server, spam, source="127.0.0.1", login=True, port_kind="submission",
                   sender="bhayden@example.org")[0] == 250                # logged in
    assert len(server.messages("alice")) == 2
    server.wait_for_log("logged in as bhayden")
    assert checks_logged(server) == []
    skipped = [line for line in server.log_text().splitlines() if "checks=skipped" in line]
    assert len(skipped) == 2 and any("logged in as bhayden" in line for line in skipped)


# ---------------------------------------------------------------- check's warnings

def test_check_warns_about_unreachable_scanners_and_silent_lists(servers, dns):
    dns.a("2.0.0.127.good-list.test", "127.0.0.2")
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        dead = probe.getsockname()[1]
    server = start(servers, dns, f"dnsbl = good-list.test, typo-list.test\n"
                                 f"clamd = 127.0.0.1:{dead}\nspamd = 127.0.0.1:{dead}",
                   name="config", start=False)
    done = subprocess.run([sys.executable, str(SCRIPT), "-c", str(server.ini), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    assert any(f"[checks] clamd: cannot reach 127.0.0.1:{dead}" in w for w in warnings)
    assert any(f"[checks] spamd: cannot reach 127.0.0.1:{dead}" in w for w in warnings)
    assert any("[checks] dnsbl: typo-list.test does not list its test point" in w
               for w in warnings)
    assert not any("good-list.test" in w for w in warnings)


def test_screen_says_a_recognised_client_skips_every_check(servers, dns):
    dns.a("2.0.0.127.bl.test", "127.0.0.2")
    server = start(servers, dns, "dnsbl = bl.test\nspf = reject", trusted="192.168.77.0/24",
                   name="screen-trusted", start=False)
    trusted = screen(server, plain(), "--client", "192.168.77.5", "--to", "alice@example.org")
    assert [line.get("result") for line in trusted[:-1]] == ["skipped"]
    assert trusted[-1]["code"] == 250
    listed = screen(server, plain(), "--client", LISTED, "--to", "alice@example.org")
    assert listed[-1]["code"] == 554
    assert any(line.get("check") == "dnsbl" and line["result"] == "listed" for line in listed)
