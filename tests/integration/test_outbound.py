"""Outbound delivery end to end: the real server (`serve`) relays to sink SMTP
servers on loopback, finding them through a DNS server the test runs.

Covers next-hop choice (MX preference and fallback, implicit MX, null MX,
NXDOMAIN, [routes], smarthost), TLS and AUTH towards the next hop, retries,
`queue flush`, bounces (RFC 3464 DSNs) and their absence for a null sender,
partial failures inside one transaction, expiry, forwarding, and a kill -9.
"""

from __future__ import annotations

import base64
import re
import time

from ..helpers.clients import smtplib_client, submit
from ..helpers.ini import SERVER_ALIASES
from ..helpers.logs import events
from ..helpers.mail import dsns, read_dsn
from ..helpers.net import HOST, free_port
from ..helpers.outbound import mx_relay
from ..helpers.tls import server_context
from ..helpers.waiting import wait_until

ALICE = "alice@example.org"
SMART_USER = "relayuser"
SMART_PASSWORD = "S3cret-Pa55word!"


def message(subject: str, to: str = "friend@remote.example", sender: str = ALICE) -> str:
    token = re.sub(r"\W+", "-", subject)
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{token}@example.org>\r\n\r\nbody of {subject}\r\n")


def remote(dns, sinks, servers, *, replies=None, retry="1s", give_up="5s", sink_options=None,
           **options):
    """remote.example -> MX mx.remote.example -> 127.0.0.1, a sink there, a server."""
    sink = sinks(replies=replies or {}, **(sink_options or {}))
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", HOST)
    server = servers(relay=mx_relay(dns, sink.port, retry, give_up), **options)
    return server, sink


def wait_done(server, queue_id: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: events(server, "done", msg=queue_id), timeout,
                      what=f"queue entry {queue_id} finished")[0]


def attempts(server, queue_id: str, **match) -> list[dict]:
    return events(server, "attempt", msg=queue_id, **match)


def assert_queue_empty(server) -> None:
    assert server.queue_ids() == [], server.queue_ids()
    assert server.queue_files() == [], server.queue_files()


# ---------------------------------------------------------------- next hops

def test_mx_hosts_are_tried_in_preference_order(dns, sinks, servers):
    port = free_port("127.0.0.2", "127.0.0.3")
    primary = sinks("127.0.0.2", port)
    backup = sinks("127.0.0.3", port)
    dns.mx("remote.example", (20, "mx2.remote.example"), (10, "mx1.remote.example"))
    dns.a("mx1.remote.example", "127.0.0.2")
    dns.a("mx2.remote.example", "127.0.0.3")
    server = servers(relay=mx_relay(dns, port))
    rcpts = ["friend@remote.example", "other@remote.example"]
    queue_id = submit(server.port(), ALICE, rcpts, message("preference"))
    assert wait_done(server, queue_id)["delivered"] == "2"
    assert [t.accepted for t in primary.deliveries()] == [rcpts]      # one transaction, both
    assert primary.deliveries()[0].sender == ALICE
    assert backup.connections == 0 and backup.transactions == []
    lines = attempts(server, queue_id)
    assert sorted(line["to"] for line in lines) == sorted(rcpts)       # one line per recipient
    for line in lines:
        assert line["relay"] == f"mx1.remote.example[127.0.0.2]:{port}"
        assert line["reply"] == "250 2.0.0 Ok: queued" and line["state"] == "delivered"
    assert events(server, "host_failed", msg=queue_id) == []
    assert_queue_empty(server)


def test_next_mx_is_used_when_the_first_refuses_connections(dns, sinks, servers):
    port = free_port("127.0.0.2", "127.0.0.3")          # nothing listens on 127.0.0.2
    backup = sinks("127.0.0.3", port)
    dns.mx("remote.example", (10, "mx1.remote.example"), (20, "mx2.remote.example"))
    dns.a("mx1.remote.example", "127.0.0.2")
    dns.a("mx2.remote.example", "127.0.0.3")
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("fallback"))
    wait_done(server, queue_id)
    assert [t.accepted for t in backup.deliveries()] == [["friend@remote.example"]]
    failed = events(server, "host_failed", msg=queue_id)
    assert [f["relay"] for f in failed] == [f"mx1.remote.example[127.0.0.2]:{port}"]
    assert "refused" in failed[0]["reason"].lower(), failed[0]
    [line] = attempts(server, queue_id)
    assert line["relay"] == f"mx2.remote.example[127.0.0.3]:{port}"
    assert line["reply"].startswith("250") and line["state"] == "delivered"


def test_next_mx_is_used_when_the_first_greets_with_421(dns, sinks, servers):
    port = free_port("127.0.0.2", "127.0.0.3")
    busy = sinks("127.0.0.2", port, banner="421 4.3.2 too busy, try another host")
    backup = sinks("127.0.0.3", port)
    dns.mx("remote.example", (10, "mx1.remote.example"), (20, "mx2.remote.example"))
    dns.a("mx1.remote.example", "127.0.0.2")
    dns.a("mx2.remote.example", "127.0.0.3")
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("busy primary"))
    wait_done(server, queue_id)
    assert busy.connections == 1
    assert len(backup.delivered("friend@remote.example")) == 1
    [failed] = events(server, "host_failed", msg=queue_id)
    assert failed["relay"] == f"mx1.remote.example[127.0.0.2]:{port}"
    assert "421 4.3.2 too busy" in failed["reason"]
    [line] = attempts(server, queue_id)
    assert line["relay"] == f"mx2.remote.example[127.0.0.3]:{port}"


def test_every_address_of_an_mx_host_is_tried_ipv6_too(dns, sinks, servers):
    port = free_port("::1", "127.0.0.2")                # nothing listens on 127.0.0.2
    sink = sinks("::1", port)
    dns.mx("remote.example", (10, "mx.remote.example"))
    dns.a("mx.remote.example", "127.0.0.2", "::1")
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("over ipv6"))
    wait_done(server, queue_id)
    [transaction] = sink.delivered("friend@remote.example")
    assert transaction.peer == "::1"
    assert [f["relay"] for f in events(server, "host_failed", msg=queue_id)] == \
        [f"mx.remote.example[127.0.0.2]:{port}"]
    [line] = attempts(server, queue_id)
    assert line["relay"] == f"mx.remote.example[::1]:{port}" and line["state"] == "delivered"


def test_domain_without_mx_gets_mail_at_its_address(dns, sinks, servers):
    port = free_port("127.0.0.2")
    sink = sinks("127.0.0.2", port)
    dns.a("plain.example", "127.0.0.2")                 # no MX: RFC 5321 5.1, the implicit MX
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["someone@plain.example"], message("implicit mx"))
    wait_done(server, queue_id)
    assert len(sink.delivered("someone@plain.example")) == 1
    [line] = attempts(server, queue_id)
    assert line["relay"] == f"plain.example[127.0.0.2]:{port}" and line["state"] == "delivered"
    assert dns.asked("plain.example", "MX") >= 1


def test_null_mx_fails_at_once_without_a_connection(dns, sinks, servers):
    sink = sinks()
    dns.mx("null.example", (0, "."))                     # RFC 7505
    dns.a("null.example", HOST)                          # would be the implicit MX: not to be used
    server = servers(relay=mx_relay(dns, sink.port, retry="1h", give_up="1d"))
    queue_id = submit(server.port(), ALICE, ["nobody@null.example"], message("null mx"))
    wait_done(server, queue_id)
    [line] = attempts(server, queue_id)
    assert line["reply"].startswith("556 5.1.10") and line["state"] == "failed"
    assert line["relay"] == "none"
    assert sink.connections == 0
    [dsn] = dsns(server.messages("alice"))
    [recipient] = dsn.recipients
    assert recipient["final-recipient"] == "rfc822; nobody@null.example"
    assert recipient["action"] == "failed" and recipient["status"] == "5.1.10"
    assert "556 5.1.10" in recipient["diagnostic-code"]
    assert_queue_empty(server)


def test_domain_that_does_not_exist_fails_at_once(dns, sinks, servers):
    sink = sinks()
    server = servers(relay=mx_relay(dns, sink.port, retry="1h", give_up="1d"))
    queue_id = submit(server.port(), ALICE, ["x@nowhere.example"], message("nxdomain"))
    wait_done(server, queue_id)
    [line] = attempts(server, queue_id)
    assert line["reply"].startswith("550 5.1.2") and line["state"] == "failed"
    [dsn] = dsns(server.messages("alice"))
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; x@nowhere.example"]
    assert dsn.recipients[0]["status"] == "5.1.2"
    assert sink.connections == 0
    assert_queue_empty(server)


def test_dns_servfail_is_a_temporary_failure(dns, sinks, servers):
    sink = sinks()
    dns.servfail.add("broken.example")
    server = servers(relay=mx_relay(dns, sink.port, retry="1h", give_up="1d"))
    queue_id = submit(server.port(), ALICE, ["x@broken.example"], message("servfail"))
    [line] = wait_until(lambda: attempts(server, queue_id), what="an attempt")
    assert line["state"] == "deferred" and line["reply"].startswith("451 4.4.1"), line
    assert "broken.example" in line["reply"]
    assert server.queue_ids() == [queue_id]
    assert server.messages("alice") == []
    assert sink.connections == 0


def test_route_overrides_the_mx_lookup(dns, sinks, servers):
    routed = sinks()
    server = servers(relay=mx_relay(dns, free_port()),
                     extra=f"\n[routes]\nlan.example = {HOST}:{routed.port}\n")
    queue_id = submit(server.port(), ALICE, ["box@lan.example"], message("routed"))
    wait_done(server, queue_id)
    assert len(routed.delivered("box@lan.example")) == 1
    [line] = attempts(server, queue_id)
    assert line["relay"] == f"{HOST}[{HOST}]:{routed.port}" and line["state"] == "delivered"
    assert dns.asked("lan.example") == 0                 # DNS has nothing for it: never asked


def test_route_overrides_the_smarthost(sinks, servers):
    smarthost = sinks()
    routed = sinks()
    server = servers(relay=f"mode = smarthost\nsmarthost = {HOST}:{smarthost.port}\n"
                           "smarthost_tls = none\nretry = 1s\ngive_up_after = 5s\n",
                     extra=f"\n[routes]\nlan.example = {HOST}:{routed.port}\n")
    queue_id = submit(server.port(), ALICE, ["box@lan.example", "friend@remote.example"],
                      message("route and smarthost"))
    assert wait_done(server, queue_id)["delivered"] == "2"
    assert [t.accepted for t in routed.deliveries()] == [["box@lan.example"]]
    assert [t.accepted for t in smarthost.deliveries()] == [["friend@remote.example"]]


# ---------------------------------------------------------------- what goes out

def test_local_and_remote_recipients_of_one_message(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers)
    queue_id = submit(server.port(), "carol@sender.example", [ALICE, "friend@remote.example"],
                      message("both ways", sender="carol@sender.example"))
    wait_done(server, queue_id)
    [local] = server.messages("alice")
    [transaction] = sink.delivered("friend@remote.example")
    assert transaction.accepted == ["friend@remote.example"]        # alice is not relayed
    first_line, rest = local.split(b"\n", 1)
    assert first_line == b"Return-Path: <carol@sender.example>"
    sent = transaction.content.replace(b"\r\n", b"\n")
    assert not sent.startswith(b"Return-Path")            # RFC 5321 4.4: final delivery adds it
    assert sent == rest                                  # the same Received: line and message
    assert sent.startswith(b"Received: from ")


def test_lines_starting_with_a_dot_arrive_intact(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers)
    body = b".leading dot\r\n..two dots\r\n.\r\n...\r\nend\r\n"
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"],
                      b"Subject: dots\r\n\r\n" + body)
    wait_done(server, queue_id)
    [transaction] = sink.deliveries()
    assert transaction.content.endswith(b"Subject: dots\r\n\r\n" + body)


def test_message_larger_than_the_next_hop_accepts_bounces_unsent(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, sink_options={"smtp_options":
                                                             {"data_size_limit": 300}})
    big = message("big one") + ("y" * 70 + "\r\n") * 10
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], big)
    wait_done(server, queue_id)
    [line] = attempts(server, queue_id)
    assert line["reply"].startswith("552 5.3.4") and line["state"] == "failed"
    assert sink.transactions == []                       # not even MAIL FROM
    [dsn] = dsns(server.messages("alice"))
    assert dsn.recipients[0]["status"] == "5.3.4"


def test_smtputf8_goes_out_only_where_offered(dns, sinks, servers):
    port = free_port("127.0.0.2", "127.0.0.3")
    modern = sinks("127.0.0.2", port)
    old = sinks("127.0.0.3", port, smtp_options={"enable_SMTPUTF8": False})
    dns.a("utf.example", "127.0.0.2")
    dns.a("ascii.example", "127.0.0.3")
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["jörg@utf.example", "jörg@ascii.example"],
                      "Subject: grüße\r\n\r\nschön\r\n".encode(), mail_options=("SMTPUTF8",))
    wait_done(server, queue_id)
    [transaction] = modern.delivered("jörg@utf.example")
    assert "SMTPUTF8" in [o.upper() for o in transaction.mail_options]
    assert "schön".encode() in transaction.content
    assert old.transactions == []                        # never downgraded (RFC 6531 3.4)
    [dsn] = dsns(server.messages("alice"))
    [recipient] = dsn.recipients
    assert recipient["final-recipient"] == "rfc822; jörg@ascii.example"
    assert recipient["status"] == "5.6.7"


# ---------------------------------------------------------------- TLS and AUTH to the next hop

def test_starttls_is_used_whenever_the_mx_offers_it(dns, sinks, servers, certificate):
    port = free_port("127.0.0.2", "127.0.0.3")
    secure = sinks("127.0.0.2", port, starttls=server_context(certificate))
    plain = sinks("127.0.0.3", port)
    dns.mx("tls.example", (10, "mx.tls.example"))
    dns.a("mx.tls.example", "127.0.0.2")
    dns.mx("plain.example", (10, "mx.plain.example"))
    dns.a("mx.plain.example", "127.0.0.3")
    server = servers(relay=mx_relay(dns, port))
    queue_id = submit(server.port(), ALICE, ["a@tls.example", "b@plain.example"], message("tls"))
    wait_done(server, queue_id)
    [secured] = secure.delivered("a@tls.example")
    assert secured.tls and secured.tls.startswith("TLSv1")
    [clear] = plain.delivered("b@plain.example")
    assert clear.tls is None
    by_rcpt = {line["to"]: line for line in attempts(server, queue_id)}
    assert by_rcpt["a@tls.example"]["tls"] == secured.tls
    assert by_rcpt["b@plain.example"]["tls"] == "no"


def smarthost_relay(port: int, tls: str = "starttls", user: str = SMART_USER,
                    password: str = SMART_PASSWORD, ca_file=None, retry: str = "1h") -> str:
    text = f"mode = smarthost\nsmarthost = {HOST}:{port}\nsmarthost_tls = {tls}\n"
    if user:
        text += f"smarthost_user = {user}\nsmarthost_password = {password}\n"
    if ca_file:
        text += f"smarthost_ca_file = {ca_file}\n"
    return text + f"retry = {retry}\ngive_up_after = 1d\n"


def test_smarthost_with_starttls_and_auth(sinks, servers, certificate):
    sink = sinks(starttls=server_context(certificate), auth=(SMART_USER, SMART_PASSWORD))
    server = servers(relay=smarthost_relay(sink.port, ca_file=certificate[0]))
    rcpts = ["friend@remote.example", "someone@elsewhere.example"]
    queue_id = submit(server.port(), ALICE, rcpts, message("via smarthost"))
    assert wait_done(server, queue_id)["delivered"] == "2"
    [transaction] = sink.deliveries()                    # every domain in one transaction
    assert transaction.accepted == rcpts and transaction.sender == ALICE
    assert transaction.tls and transaction.login == SMART_USER
    assert sink.auth_attempts == [(SMART_USER, SMART_PASSWORD, True)]
    assert b"body of via smarthost" in transaction.content
    for line in attempts(server, queue_id):
        assert line["relay"] == f"{HOST}[{HOST}]:{sink.port}" and line["tls"] == transaction.tls
    log = server.log_text()
    plain = base64.b64encode(f"\0{SMART_USER}\0{SMART_PASSWORD}".encode()).decode()
    for secret in (SMART_PASSWORD, plain, base64.b64encode(SMART_PASSWORD.encode()).decode()):
        assert secret not in log
    assert "log_level = debug" in server.ini.read_text()     # the whole dialogue may be logged


def test_smarthost_refusing_our_login_keeps_the_entry(sinks, servers, certificate):
    sink = sinks(starttls=server_context(certificate), auth=(SMART_USER, "the-right-one"))
    server = servers(relay=smarthost_relay(sink.port, ca_file=certificate[0]))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("bad login"))
    [line] = wait_until(lambda: attempts(server, queue_id), what="an attempt")
    assert line["state"] == "deferred" and line["reply"].startswith("4"), line
    assert f"refused our login as {SMART_USER}" in line["reply"]
    assert "535" in line["reply"]
    # the sink checked: what was offered is the configured login, and it was refused
    # (smtplib tries each mechanism the sink offers: PLAIN, then LOGIN)
    assert sink.auth_attempts and \
        set(sink.auth_attempts) == {(SMART_USER, SMART_PASSWORD, False)}
    assert sink.deliveries() == []
    assert server.queue_ids() == [queue_id]
    assert server.messages("alice") == []                # temporary: no bounce
    assert SMART_PASSWORD not in server.log_text()


def test_smarthost_starttls_required_but_not_offered(sinks, servers):
    sink = sinks()                                       # no STARTTLS
    server = servers(relay=smarthost_relay(sink.port, user=""))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("no starttls"))
    [line] = wait_until(lambda: attempts(server, queue_id), what="an attempt")
    assert line["state"] == "deferred" and "does not offer STARTTLS" in line["reply"], line
    assert sink.connections >= 1 and sink.transactions == []
    assert server.queue_ids() == [queue_id]


def test_smarthost_with_implicit_tls_verifies_the_certificate(sinks, servers, certificate):
    sink = sinks(implicit_tls=server_context(certificate))
    server = servers(relay=smarthost_relay(sink.port, tls="tls", user="",
                                           ca_file=certificate[0]))
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("implicit tls"))
    wait_done(server, queue_id)
    [transaction] = sink.delivered("friend@remote.example")
    assert transaction.tls and transaction.tls.startswith("TLSv1")
    [line] = attempts(server, queue_id)
    assert line["tls"] == transaction.tls and line["state"] == "delivered"


def test_smarthost_certificate_not_trusted_is_not_used(sinks, servers, certificate):
    sink = sinks(implicit_tls=server_context(certificate))
    server = servers(relay=smarthost_relay(sink.port, tls="tls", user=""))   # system CAs only
    queue_id = submit(server.port(), ALICE, ["friend@remote.example"], message("untrusted"))
    [line] = wait_until(lambda: attempts(server, queue_id), what="an attempt")
    assert line["state"] == "deferred" and "CERTIFICATE_VERIFY_FAILED" in line["reply"], line
    assert sink.transactions == []
    assert server.queue_ids() == [queue_id]


# ---------------------------------------------------------------- retries, bounces

def test_temporary_failure_then_queue_flush_delivers_exactly_once(dns, sinks, servers):
    script = {"later@remote.example": ["451 4.2.0 try later", "250 2.1.5 OK"]}
    server, sink = remote(dns, sinks, servers, retry="1h", give_up="1d", replies=script)
    queue_id = submit(server.port(), ALICE, ["later@remote.example"], message("flush me"))
    [first] = wait_until(lambda: attempts(server, queue_id), what="the first attempt")
    assert first["state"] == "deferred" and first["reply"] == "451 4.2.0 try later"
    time.sleep(1.5)                                      # the retry is an hour away: nothing moves
    assert len(sink.transactions) == 1 and server.queue_ids() == [queue_id]
    result = server.cli("queue", "flush")
    assert result.returncode == 0, result.stderr
    assert "flushed 1 entry" in result.stdout
    wait_done(server, queue_id)
    time.sleep(1.5)                                      # and nothing comes twice
    assert len(sink.delivered("later@remote.example")) == 1
    assert len(sink.deliveries()) == 1
    lines = attempts(server, queue_id)
    assert [(line["attempts"], line["state"]) for line in lines] == \
        [("1", "deferred"), ("2", "delivered")]
    assert_queue_empty(server)
    assert server.messages("alice") == []


def test_permanent_failure_sends_a_dsn_to_the_local_sender(dns, sinks, servers):
    reply = "550 5.1.1 <bad@remote.example>: no such user here"
    server, sink = remote(dns, sinks, servers, replies={"bad@remote.example": reply})
    queue_id = submit(server.port(), ALICE, ["bad@remote.example"],
                      message("report me", "bad@remote.example"))
    wait_done(server, queue_id)
    [raw] = server.messages("alice")
    assert raw.startswith(b"Return-Path: <>\n")
    [dsn] = dsns(server.messages("alice"))
    head = dsn.message
    assert head["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert head["To"].addresses[0].addr_spec == ALICE
    assert head["Auto-Submitted"] == "auto-replied"
    assert dsn.per_message["reporting-mta"] == "dns; mail.example.org"
    [recipient] = dsn.recipients
    assert recipient["final-recipient"] == "rfc822; bad@remote.example"
    assert recipient["action"] == "failed"
    assert recipient["status"] == "5.1.1"
    assert recipient["diagnostic-code"] == f"smtp; {reply}"
    assert recipient["remote-mta"] == "dns; mx.remote.example"
    assert "Subject: report me" in dsn.headers
    assert "Message-ID: <report-me@example.org>" in dsn.headers
    assert "body of report me" not in dsn.raw.decode()     # the header only
    assert "bad@remote.example" in dsn.explanation
    assert sink.deliveries() == []
    [bounce] = events(server, "bounce", msg=queue_id)
    assert bounce["to"] == ALICE
    assert_queue_empty(server)


def test_null_sender_gets_no_dsn(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers,
                          replies={"bad@remote.example": "550 5.1.1 no such user"})
    queue_id = submit(server.port(), "", ["bad@remote.example"], message("bounce of a bounce"))
    wait_done(server, queue_id)
    [line] = attempts(server, queue_id)
    assert line["state"] == "failed"
    [no_bounce] = events(server, "no_bounce", msg=queue_id)
    assert "null sender" in no_bounce["reason"]
    assert events(server, "bounce") == []
    assert all(messages == [] for messages in server.all_messages().values())
    assert sink.transactions[0].sender == ""             # it went out with MAIL FROM:<>
    assert_queue_empty(server)


def test_partial_failure_in_one_transaction(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, replies={
        "bad@remote.example": "550 5.1.1 no such user",
        "later@remote.example": ["451 4.2.0 greylisted", "250 2.1.5 OK"]})
    rcpts = ["bad@remote.example", "later@remote.example", "good@remote.example"]
    queue_id = submit(server.port(), ALICE, rcpts, message("three recipients"))
    wait_done(server, queue_id)
    first, second = sink.transactions
    assert [a for a, _ in first.rcpts] == rcpts           # one transaction for all three
    assert [r[:3] for _, r in first.rcpts] == ["550", "451", "250"]
    assert first.accepted == ["good@remote.example"] and first.content is not None
    assert [a for a, _ in second.rcpts] == ["later@remote.example"]   # the 451 one alone
    assert second.accepted == ["later@remote.example"]
    assert len(sink.delivered("good@remote.example")) == 1
    assert len(sink.delivered("later@remote.example")) == 1
    assert sink.delivered("bad@remote.example") == []
    [dsn] = dsns(server.messages("alice"))
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; bad@remote.example"]
    # the DSN went out after the first attempt, before the retry succeeded
    bounce_line = [i for i, line in enumerate(server.log_text().splitlines())
                   if "event=bounce" in line and f"msg={queue_id}" in line]
    retry_line = [i for i, line in enumerate(server.log_text().splitlines())
                  if "event=attempt" in line and "attempts=2" in line]
    assert len(bounce_line) == 1 and len(retry_line) == 1 and bounce_line[0] < retry_line[0]
    assert_queue_empty(server)


def test_data_refused_at_the_data_command_spoils_no_other_message(dns, sinks, servers):
    """A reply to DATA that is not 354 leaves the server's transaction open:
    the client must reset it before it uses the connection again."""
    server, sink = remote(dns, sinks, servers, sink_options={
        "refuse_data": {"blocked@one.example": "554 5.7.1 no data from you"}})
    for domain in ("one.example", "two.example"):         # two domains, one MX host
        dns.mx(domain, (10, "mx.remote.example"))
    queue_id = submit(server.port(), ALICE, ["blocked@one.example", "fine@two.example"],
                      message("two domains"))
    wait_done(server, queue_id)
    by_rcpt = {line["to"]: line for line in attempts(server, queue_id)}
    assert by_rcpt["blocked@one.example"]["reply"] == "554 5.7.1 no data from you"
    assert by_rcpt["fine@two.example"]["state"] == "delivered", by_rcpt["fine@two.example"]
    assert len(sink.delivered("fine@two.example")) == 1
    [dsn] = dsns(server.messages("alice"))
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; blocked@one.example"]


def test_expiry_after_give_up_after(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, retry="1s", give_up="3s",
                          replies={"later@remote.example": "451 4.2.0 still busy"})
    started = time.monotonic()
    queue_id = submit(server.port(), ALICE, ["later@remote.example"], message("expires"))
    wait_done(server, queue_id, timeout=15)
    assert time.monotonic() - started >= 3.0
    lines = attempts(server, queue_id)
    assert len(lines) >= 2 and lines[-1]["state"] == "failed"
    assert all(line["state"] == "deferred" for line in lines[:-1])
    [dsn] = dsns(server.messages("alice"))
    assert "expired" in dsn.message["Subject"]
    [recipient] = dsn.recipients
    assert recipient["action"] == "failed"
    assert recipient["status"] == "4.2.0"
    assert "451 4.2.0 still busy" in recipient["diagnostic-code"]
    assert "gave up after" in recipient["diagnostic-code"]
    assert "retry period" in dsn.explanation
    assert sink.deliveries() == []
    assert_queue_empty(server)


# ---------------------------------------------------------------- forwarding and crashes

FORWARD_ALIASES = SERVER_ALIASES + "fwd = friend@remote.example\nfwdbad = bad@remote.example\n"
STRANGER = "192.0.2.0/24"                                # 127.0.0.1 is not trusted


def test_forwarding_keeps_the_envelope_sender(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, aliases=FORWARD_ALIASES, trusted=STRANGER)
    with smtplib_client(server.port("smtp")) as client:                   # may not relay
        client.ehlo("client.example.com")
        client.mail("carol@sender.example")
        code, _ = client.rcpt("friend@remote.example")
        assert code == 554
    queue_id = submit(server.port(), "carol@sender.example", ["fwd@example.org"],
                      message("forward me"))
    wait_done(server, queue_id)
    [transaction] = sink.deliveries()
    assert transaction.sender == "carol@sender.example"
    assert transaction.accepted == ["friend@remote.example"]
    assert b"Subject: forward me" in transaction.content


def test_forward_failure_bounces_to_the_remote_sender_with_a_null_sender(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, aliases=FORWARD_ALIASES, trusted=STRANGER,
                          replies={"bad@remote.example": "550 5.1.1 gone"})
    dns.mx("sender.example", (10, "mx.remote.example"))
    queue_id = submit(server.port(), "carol@sender.example", ["fwdbad@example.org"],
                      message("forwarded"))
    wait_done(server, queue_id)
    [bounce] = events(server, "bounce", msg=queue_id)
    wait_done(server, bounce["dsn"])
    [dsn_mail] = sink.delivered("carol@sender.example")
    assert dsn_mail.sender == ""                         # never bounced in turn
    dsn = read_dsn(dsn_mail.content.replace(b"\r\n", b"\n"))
    [recipient] = dsn.recipients
    assert recipient["original-recipient"] == "rfc822; fwdbad@example.org"
    assert recipient["final-recipient"] == "rfc822; bad@remote.example"
    assert recipient["status"] == "5.1.1"
    assert_queue_empty(server)


def test_kill_9_with_an_entry_queued_then_restart_delivers_once(dns, sinks, servers):
    server, sink = remote(dns, sinks, servers, retry="1h", give_up="1d",
                          replies={"later@remote.example": ["451 4.2.0 not now", "250 2.1.5 OK"]})
    queue_id = submit(server.port(), ALICE, ["later@remote.example"], message("survives a crash"))
    wait_until(lambda: attempts(server, queue_id, state="deferred"), what="a deferred attempt")
    server.kill()
    assert server.queue_ids() == [queue_id]
    server.start()
    time.sleep(1.5)                                      # not due for an hour: left alone
    assert len(sink.transactions) == 1
    result = server.cli("queue", "flush")
    assert result.returncode == 0 and "flushed 1 entry" in result.stdout, result
    wait_done(server, queue_id)
    time.sleep(1.0)
    assert len(sink.delivered("later@remote.example")) == 1
    assert len(sink.deliveries()) == 1
    assert b"body of survives a crash" in sink.deliveries()[0].content
    assert_queue_empty(server)
