"""The household's own mail made deliverable, end to end (DESIGN 7.2): DKIM
signatures verified with dkimpy at a sink against keys published in the
test's DNS server, SRS on forwards and on the bounces that come back,
`[routes] domain = smarthost` in mx mode, and the TLS facts in the
delivery log.
"""

from __future__ import annotations

import re
import time

import dkim as dkimpy
import dns.message
import dns.query
import dns.rdatatype
import pytest

from lib.outbound import dkim, srs

from ..helpers.clients import smtplib_client, submit
from ..helpers.ini import HOSTNAME, SERVER_ALIASES
from ..helpers.logs import events
from ..helpers.net import HOST
from ..helpers.outbound import mx_relay
from ..helpers.tls import server_context
from ..helpers.waiting import wait_until

ALICE = "alice@example.org"
FRIEND = "friend@remote.example"
STRANGER = "stranger@remote.example"
FORWARDED_TO = "bob@remote.example"
SECRET = "a-test-srs-secret-of-some-length"
DKIM_SECTION = "[dkim]\nselector = mail\nalgorithms = rsa, ed25519\n"
FORWARD_ALIASES = SERVER_ALIASES + f"fwd = {FORWARDED_TO}\n"


def message(subject: str, sender: str = ALICE, to: str = FRIEND) -> str:
    token = re.sub(r"\W+", "-", subject)
    return (f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 04:00:00 +0000\r\n"
            f"Message-ID: <{token}@example.org>\r\n\r\nbody of {subject}\r\n")


def publish_keys(server, dns_server, domain: str = "example.org") -> None:
    """Make example.org's RSA and Ed25519 keys in the server's data_dir and publish
    their public halves in the test's DNS server."""
    for algorithm in ("rsa", "ed25519"):
        selector = f"mail-{algorithm}"
        path = dkim.key_path(server.data, domain, selector)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dkim.new_key_file(algorithm)
        path.write_bytes(data)
        key = dkim.parse_key(data, algorithm, domain, selector)
        dns_server.txt(f"{selector}._domainkey.{domain}", key.public_record())


def lab(dns, sinks, servers, *, trusted: str = "127.0.0.0/8", relay_extra: str = "",
        keys: bool = True, **options):
    """(server, sink): remote.example's MX is the sink, example.org has keys."""
    sink = sinks()
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    options.setdefault("aliases", FORWARD_ALIASES)
    server = servers(start=False, trusted=trusted, extra=DKIM_SECTION,
                     relay=mx_relay(dns, sink.port) + relay_extra, **options)
    if keys:
        publish_keys(server, dns)
    server.start()
    return server, sink


def dns_txt(dns_server):
    """dkimpy's dnsfunc, asking the test's DNS server."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode("ascii"), dns.rdatatype.TXT)
        answer = dns.query.udp(query, HOST, port=dns_server.port, timeout=timeout)
        for rrset in answer.answer:
            for record in rrset:
                return b"".join(record.strings)
        return b""
    return lookup


def signatures(content: bytes) -> list[bytes]:
    return re.findall(rb"^DKIM-Signature:.*?(?=^\S)", content, re.M | re.S)


def verified(content: bytes, dns_server) -> list[bool]:
    """dkimpy's verdict on each signature of the message, in order."""
    checker = dkimpy.DKIM(content)
    results = []
    for i in range(len(signatures(content))):
        try:
            results.append(bool(checker.verify(idx=i, dnsfunc=dns_txt(dns_server))))
        except dkimpy.ValidationError:          # e.g. a body hash mismatch
            results.append(False)
    return results


def delivered(sink, address: str, count: int = 1):
    return wait_until(lambda: sink.delivered(address) if len(sink.delivered(address)) >= count
                      else None, 15, what=f"{count} deliveries to {address}")


# ---------------------------------------------------------------- DKIM

def test_household_mail_is_signed_once_per_algorithm_and_verifies(dns, sinks, servers):
    server, sink = lab(dns, sinks, servers)
    queue_id = submit(server.port(), ALICE, [FRIEND], message("signed"))
    [transaction] = delivered(sink, FRIEND)
    content = transaction.content
    found = signatures(content)
    assert len(found) == 2, content
    assert [b"a=rsa-sha256" in found[0] or b"a=rsa-sha256" in found[1],
            any(b"a=ed25519-sha256" in s for s in found)] == [True, True]
    assert verified(content, dns) == [True, True]
    for field in found:
        unfolded = re.sub(rb"\s+", b"", field)
        assert b"c=relaxed/relaxed" in unfolded and b"d=example.org" in unfolded
        signed = unfolded.split(b"h=")[1].split(b";")[0].lower().split(b":")
        assert signed.count(b"from") == 2, signed          # From: over-signed
    # the signatures sit on top, above our Received: line
    assert content.index(b"DKIM-Signature:") < content.index(b"Received:")
    logged = events(server, "dkim_signed", msg=queue_id)
    assert sorted(line["selector"] for line in logged) == ["mail-ed25519", "mail-rsa"]
    assert {line["domain"] for line in logged} == {"example.org"}


def test_a_tampered_signed_message_fails_verification(dns, sinks, servers):
    """The check above can fail: the same verifier refuses a changed body."""
    server, sink = lab(dns, sinks, servers)
    submit(server.port(), ALICE, [FRIEND], message("tampered"))
    [transaction] = delivered(sink, FRIEND)
    changed = transaction.content.replace(b"body of tampered", b"body of something else")
    assert verified(changed, dns) == [False, False]


def test_sendmail_submitted_mail_is_signed(dns, sinks, servers):
    server, sink = lab(dns, sinks, servers)
    result = server.cli("sendmail", FRIEND,
                        stdin=b"From: alice@example.org\nSubject: cron\n\ncron output\n")
    assert result.returncode == 0, result.stderr
    [transaction] = delivered(sink, FRIEND)
    assert len(signatures(transaction.content)) == 2, transaction.content
    assert verified(transaction.content, dns) == [True, True]


@pytest.mark.parametrize("sender", ["someone@elsewhere.example", "bhayden@example.net"],
                         ids=["foreign From: domain", "local domain without a key"])
def test_mail_is_not_signed_without_a_key_for_its_from_domain(dns, sinks, servers, sender):
    server, sink = lab(dns, sinks, servers)
    queue_id = submit(server.port(), ALICE, [FRIEND], message("unsigned", sender=sender))
    [transaction] = delivered(sink, FRIEND)
    assert signatures(transaction.content) == []
    assert events(server, "dkim_signed", msg=queue_id) == []
    assert events(server, "dkim_failed", msg=queue_id) == []


def test_a_strangers_mail_is_never_signed_even_when_forwarded(dns, sinks, servers):
    # loopback is not trusted here: the test client is a stranger
    server, sink = lab(dns, sinks, servers, trusted="192.0.2.0/24",
                       relay_extra=f"srs_secret = {SECRET}\n")
    # a From: in a signed domain does not make a stranger's message ours
    queue_id = submit(server.port(), STRANGER, ["fwd@example.org"],
                      message("forwarded", sender=ALICE, to="fwd@example.org"))
    [transaction] = delivered(sink, FORWARDED_TO)
    assert signatures(transaction.content) == []
    assert events(server, "dkim_signed", msg=queue_id) == []


def test_a_broken_key_sends_the_message_unsigned_and_logs_why(dns, sinks, servers):
    server, sink = lab(dns, sinks, servers, keys=False)
    path = dkim.key_path(server.data, "example.org", "mail-rsa")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a key\n")
    queue_id = submit(server.port(), ALICE, [FRIEND], message("broken key"))
    [transaction] = delivered(sink, FRIEND)
    assert signatures(transaction.content) == []
    [failed] = events(server, "dkim_failed", msg=queue_id)
    assert failed["selector"] == "mail-rsa" and "not an rsa private key" in failed["reason"]


# ---------------------------------------------------------------- SRS

def srs_lab(dns, sinks, servers, trusted: str = "192.0.2.0/24", **options):
    return lab(dns, sinks, servers, trusted=trusted,
               relay_extra=f"srs_secret = {SECRET}\n", **options)


def test_srs_round_trip_forward_then_bounce(dns, sinks, servers):
    server, sink = srs_lab(dns, sinks, servers)
    submit(server.port(), STRANGER, ["fwd@example.org"],
           message("srs forward", sender=STRANGER, to="fwd@example.org"))
    [forwarded] = delivered(sink, FORWARDED_TO)
    local, _, domain = forwarded.sender.rpartition("@")
    assert domain == HOSTNAME and local.startswith("SRS0="), forwarded.sender
    assert srs.reverse(forwarded.sender, SECRET, time.time()) == STRANGER
    # the receiver bounces it to the SRS address: back to the original sender
    queue_id = submit(server.port(), "", [forwarded.sender],
                      "From: MAILER-DAEMON@remote.example\r\nSubject: bounce\r\n\r\nno\r\n")
    [bounce] = delivered(sink, STRANGER)
    assert bounce.sender == "" and bounce.accepted == [STRANGER]
    [rcpt] = wait_until(lambda: events(server, "rcpt", msg=queue_id), 10)
    assert rcpt["rule"] == "srs"


def test_a_forward_refused_downstream_bounces_to_the_original_sender(dns, sinks, servers):
    """Our own DSN about a forward with an SRS sender is reversed, not mailed to itself."""
    sink = sinks(replies={FORWARDED_TO: "550 5.1.1 no such user"})
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    server = servers(trusted="192.0.2.0/24", aliases=FORWARD_ALIASES,
                     relay=mx_relay(dns, sink.port) + f"srs_secret = {SECRET}\n")
    submit(server.port(), STRANGER, ["fwd@example.org"],
           message("refused forward", sender=STRANGER, to="fwd@example.org"))
    [dsn] = delivered(sink, STRANGER)
    assert dsn.sender == "" and b"no such user" in dsn.content
    assert dns.asked(HOSTNAME) == 0              # no MX look-up of our own SRS domain


def test_household_mail_keeps_its_sender_and_forwards_get_srs(dns, sinks, servers):
    """One message to a remote address and to a forwarding alias: two queue entries."""
    server, sink = srs_lab(dns, sinks, servers, trusted="127.0.0.0/8")
    queue_id = submit(server.port(), ALICE, [FRIEND, "fwd@example.org"], message("both kinds"))
    [direct] = delivered(sink, FRIEND)
    [forwarded] = delivered(sink, FORWARDED_TO)
    assert direct.sender == ALICE and direct.accepted == [FRIEND]
    assert forwarded.sender.startswith("SRS0=") and forwarded.accepted == [FORWARDED_TO]
    [accepted] = events(server, "accepted", msg=queue_id)
    assert len(accepted["queue"].split(",")) == 2, accepted


def srs_refusal(server, address: str) -> tuple[int, bytes]:
    with smtplib_client(server.port()) as client:
        client.ehlo()
        client.mail("")
        return client.rcpt(address)


@pytest.mark.parametrize("kind", ["forged", "expired", "malformed", "not srs"])
def test_bad_srs_addresses_are_refused_at_rcpt(dns, sinks, servers, kind):
    server, _ = srs_lab(dns, sinks, servers)
    now = time.time()
    address = {
        "forged": srs.forward(STRANGER, HOSTNAME, "another-secret-entirely", now),
        "expired": srs.forward(STRANGER, HOSTNAME, SECRET, now - 30 * 86400),
        "malformed": f"SRS0=abcd@{HOSTNAME}",
        "not srs": f"someone@{HOSTNAME}",
    }[kind]
    code, text = srs_refusal(server, address)
    assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
    [refused] = wait_until(lambda: events(server, "rcpt_refused", to=f"<{address}>"), 10)
    reason = {"not srs": "SRS addresses only"}.get(kind, f"{kind} SRS address")
    assert reason in refused["reason"], refused


def test_a_valid_srs_address_is_accepted_from_a_stranger(dns, sinks, servers):
    server, _ = srs_lab(dns, sinks, servers)
    code, text = srs_refusal(server, srs.forward(STRANGER, HOSTNAME, SECRET, time.time()))
    assert code == 250, text


# ---------------------------------------------------------------- routes = smarthost

def test_route_to_the_smarthost_in_mx_mode(dns, sinks, servers):
    smarthost = sinks()
    sink = sinks()
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    relay = (mx_relay(dns, sink.port) + f"smarthost = {HOST}:{smarthost.port}\n"
             "smarthost_tls = none\n")
    server = servers(relay=relay, extra="[routes]\noutlook.example = smarthost\n")
    submit(server.port(), ALICE, [FRIEND, "someone@outlook.example"], message("routes"))
    [via_smarthost] = delivered(smarthost, "someone@outlook.example")
    [direct] = delivered(sink, FRIEND)
    assert via_smarthost.accepted == ["someone@outlook.example"]
    assert direct.accepted == [FRIEND]
    assert dns.asked("outlook.example") == 0        # no MX look-up for it


def test_check_refuses_a_smarthost_route_without_a_smarthost(servers):
    server = servers(start=False, extra="[routes]\noutlook.example = smarthost\n")
    result = server.cli("check")
    assert result.returncode == 2, result
    assert "[routes] outlook.example" in result.stderr and "smarthost" in result.stderr


# ---------------------------------------------------------------- TLS in the log

def test_mx_delivery_logs_tls_version_and_unverified_certificate(dns, sinks, servers,
                                                                   certificate):
    sink = sinks(starttls=server_context(certificate))
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    server = servers(relay=mx_relay(dns, sink.port))
    queue_id = submit(server.port(), ALICE, [FRIEND], message("tls mx"))
    [transaction] = delivered(sink, FRIEND)
    [attempt] = wait_until(lambda: events(server, "attempt", msg=queue_id), 10)
    assert attempt["tls"] == transaction.tls and attempt["tls"].startswith("TLSv1.")
    assert attempt["verified"] == "no"


def test_plain_delivery_logs_no_tls(dns, sinks, servers):
    server, sink = lab(dns, sinks, servers, keys=False)
    queue_id = submit(server.port(), ALICE, [FRIEND], message("plain"))
    delivered(sink, FRIEND)
    [attempt] = wait_until(lambda: events(server, "attempt", msg=queue_id), 10)
    assert (attempt["tls"], attempt["verified"]) == ("no", "no")


def test_smarthost_delivery_logs_a_verified_certificate(sinks, servers, certificate):
    sink = sinks(starttls=server_context(certificate))
    relay = (f"mode = smarthost\nsmarthost = {HOST}:{sink.port}\nsmarthost_tls = starttls\n"
             f"smarthost_ca_file = {certificate[0]}\nretry = 1s\ngive_up_after = 5s\n")
    server = servers(relay=relay)
    queue_id = submit(server.port(), ALICE, [FRIEND], message("tls smarthost"))
    delivered(sink, FRIEND)
    [attempt] = wait_until(lambda: events(server, "attempt", msg=queue_id), 10)
    assert attempt["tls"].startswith("TLSv1.") and attempt["verified"] == "yes"

