"""dns-records: every record a domain needs, as a zone dnspython reads; --check
against the tests' own DNS server with records present (written differently
but meaning the same), missing, different and unanswered; the README's
example is what the command prints."""

from __future__ import annotations

import re

import dns.reversename
import pytest

from lib.outbound import dkim

from ..helpers.cli import ROOT, run_cli
from ..helpers.dnsrecords import README_KEY, dkim_config, txt_records, zone_records
from ..helpers.outbound import FakeDNS

HOST = "mail.example.org."
LISTEN = {"smtp": "0.0.0.0:25", "submission": "0.0.0.0:587, [::]:587",
          "submissions": "[::]:465", "pop3": "127.0.0.1:110", "pop3s": "0.0.0.0:995"}
TLS = ("/nonexistent/cert.pem", "/nonexistent/key.pem")   # dns-records reads neither


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """A data_dir with mail-rsa and mail-ed25519 keys for example.org (none for
    example.net), and their TXT texts by record name."""
    data_dir = tmp_path_factory.mktemp("records") / "data"
    texts = {}
    for algorithm in ("rsa", "ed25519"):
        path = dkim.key_path(data_dir, "example.org", f"mail-{algorithm}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dkim.new_key_file(algorithm))
        key = dkim.load_key(data_dir, "example.org", algorithm, f"mail-{algorithm}")
        assert key is not None
        texts[key.record_name] = key.public_record()
    return data_dir, texts


@pytest.fixture
def records_dns():
    server = FakeDNS().start()
    yield server
    server.stop()


def config(tmp_path, keys, relay: dict | None = None, dns_server: FakeDNS | None = None):
    relay = dict(relay or {})
    if dns_server is not None:
        relay["nameservers"] = f"127.0.0.1:{dns_server.port}"
    return dkim_config(tmp_path, keys[0], listen=LISTEN, tls=TLS, relay=relay)


def dns_records(ini, *args: str):
    return run_cli("dns-records", *args, config=ini, timeout=60)


# ---------------------------------------------------------------- what to publish

def test_every_record_a_domain_needs_in_zone_file_syntax(tmp_path, keys):
    done = dns_records(config(tmp_path, keys))
    assert done.returncode == 0, done.stderr
    records = zone_records(done.stdout)
    assert records[("example.org.", "MX")] == [f"10 {HOST}"]
    assert records[("example.org.", "TXT")] == ['"v=spf1 mx -all"']
    assert records[("_dmarc.example.org.", "TXT")] == \
        ['"v=DMARC1; p=none; rua=mailto:postmaster@example.org"']
    assert records[("_submissions._tcp.example.org.", "SRV")] == [f"0 1 465 {HOST}"]
    assert records[("_submission._tcp.example.org.", "SRV")] == [f"10 1 587 {HOST}"]
    assert records[("_pop3s._tcp.example.org.", "SRV")] == [f"0 1 995 {HOST}"]
    assert ("_pop3._tcp.example.org.", "SRV") not in records          # loopback only
    assert "; no _pop3._tcp SRV record: [listen] pop3 is on loopback only" in done.stdout
    texts = txt_records(done.stdout)
    for name, text in keys[1].items():
        assert texts[name] == text
    # example.net has no key yet: a comment says how to make one
    assert not [name for name in texts if name.endswith("_domainkey.example.net.")]
    assert "; mail-rsa._domainkey.example.net: no rsa key yet: run `mailbox_appliance.py " \
           "dkim-keygen example.net`" in done.stdout
    assert records[("example.net.", "MX")] == [f"10 {HOST}"]
    assert f";   {HOST} 3600 IN A <your public IPv4 address>" in done.stdout


@pytest.mark.parametrize("smarthost, spf", [
    ("smtp.provider.example:587", "v=spf1 mx include:provider.example -all"),
    ("provider.example:587", "v=spf1 mx include:provider.example -all"),
    ("192.0.2.25:587", "v=spf1 mx ip4:192.0.2.25 -all"),
])
def test_in_smarthost_mode_spf_includes_the_smarthost(tmp_path, keys, smarthost, spf):
    done = dns_records(config(tmp_path, keys, {"mode": "smarthost", "smarthost": smarthost}),
                       "example.org")
    assert done.returncode == 0, done.stderr
    assert zone_records(done.stdout)[("example.org.", "TXT")] == [f'"{spf}"']
    assert "[relay] smarthost" in done.stdout


def test_only_the_named_domains_and_never_a_foreign_one(tmp_path, keys):
    ini = config(tmp_path, keys)
    named = zone_records(dns_records(ini, "EXAMPLE.NET.").stdout)
    assert {name for name, _ in named} >= {"example.net."}
    assert not [name for name, _ in named if name.endswith("example.org.")]
    refused = dns_records(ini, "gmail.example")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("gmail.example is not one of this server's [domains] "
                                      "(example.org, example.net)")


# ---------------------------------------------------------------- --check

def publish_everything(server: FakeDNS, keys) -> None:
    """Every record of example.org, each written differently from what dns-records
    prints but meaning the same."""
    server.mx("example.org", (5, "MAIL.Example.ORG"), (20, "backup.example.net"))
    server.txt("example.org", "google-site-verification=abc", "v=spf1   +MX -all")
    for name, text in keys[1].items():
        spaced = text.replace("; ", ";").replace("p=", "p= ", 1)
        server.txt(name, spaced, split=100)
    server.txt("_dmarc.example.org", "v=DMARC1;p=quarantine; pct=100; "
                                     "rua=mailto:Postmaster@example.org")
    server.srv("_submissions._tcp.example.org", 5, 0, 465, "mail.example.org")
    server.srv("_submission._tcp.example.org", 10, 1, 587, "mail.example.org.")
    server.srv("_pop3s._tcp.example.org", 0, 1, 995, "Mail.Example.Org")
    server.a("mail.example.org", "192.0.2.7", "2001:db8::7")
    for address in ("192.0.2.7", "2001:db8::7"):
        server.ptr(dns.reversename.from_address(address).to_text(), "mail.example.org")


def check_lines(stdout: str) -> dict[str, str]:
    """{status: ...} lines of --check by what they are about: 'TYPE name'."""
    found = {}
    for line in stdout.splitlines():
        match = re.match(r"(ok|missing|differs|unknown) +(\S+) (\S+)", line)
        if match:
            found[f"{match[3]} {match[2]}"] = line
    return found


def test_check_finds_every_record_when_they_mean_the_same(tmp_path, keys, records_dns):
    publish_everything(records_dns, keys)
    done = dns_records(config(tmp_path, keys, dns_server=records_dns), "--check", "example.org")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = check_lines(done.stdout)
    assert sorted(lines) == sorted([
        f"A/AAAA {HOST}", "PTR 7.2.0.192.in-addr.arpa.",
        "PTR 7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "MX example.org.", "TXT example.org.", "TXT mail-rsa._domainkey.example.org.",
        "TXT mail-ed25519._domainkey.example.org.", "TXT _dmarc.example.org.",
        "SRV _submissions._tcp.example.org.", "SRV _submission._tcp.example.org.",
        "SRV _pop3s._tcp.example.org."])
    assert all(line.startswith("ok ") for line in lines.values()), done.stdout
    assert done.stdout.splitlines()[-1] == "; 11 of 11 ok"
    assert records_dns.asked("example.org", "MX") == 1           # the server was really asked


def test_check_says_missing_and_differs_with_both_values(tmp_path, keys, records_dns):
    publish_everything(records_dns, keys)
    del records_dns.records["_dmarc.example.org"]
    records_dns.records["example.org"]["TXT"] = [["v=spf1 -all mx"]]    # order matters here
    records_dns.records["example.org"]["MX"] = [(10, "mx.old-provider.example")]
    records_dns.records["_pop3s._tcp.example.org"]["SRV"] = [(0, 1, 1995, "mail.example.org")]
    rsa_name = "mail-rsa._domainkey.example.org"
    other = dkim.parse_key(dkim.new_key_file("ed25519"), "ed25519", "x", "y").public_record()
    records_dns.records[rsa_name]["TXT"] = [[other]]
    records_dns.records["7.2.0.192.in-addr.arpa"]["PTR"] = ["host-7.isp.example"]
    done = dns_records(config(tmp_path, keys, dns_server=records_dns), "--check", "example.org")
    assert done.returncode == 1
    lines = check_lines(done.stdout)
    assert lines["TXT _dmarc.example.org."] == (
        'missing  _dmarc.example.org. TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.org"')
    assert lines["TXT example.org."] == (
        'differs  example.org. TXT "v=spf1 mx -all"   published: "v=spf1 -all mx"')
    assert lines["MX example.org."] == (
        f"differs  example.org. MX 10 {HOST}   published: 10 mx.old-provider.example.")
    assert lines["SRV _pop3s._tcp.example.org."] == (
        f"differs  _pop3s._tcp.example.org. SRV 0 1 995 {HOST}   published: "
        f"0 1 1995 {HOST}")
    assert lines[f"TXT {rsa_name}."].startswith(f'differs  {rsa_name}. TXT "v=DKIM1; k=rsa; p=')
    assert lines[f"TXT {rsa_name}."].endswith(f'published: "{other}"')
    assert lines["PTR 7.2.0.192.in-addr.arpa."] == (
        f"differs  7.2.0.192.in-addr.arpa. PTR {HOST}   published: host-7.isp.example.")
    assert lines["TXT mail-ed25519._domainkey.example.org."].startswith("ok ")
    assert done.stdout.splitlines()[-1].startswith("; 5 of 11 ok")


def test_check_says_unknown_when_the_dns_does_not_answer(tmp_path, keys, records_dns):
    publish_everything(records_dns, keys)
    records_dns.servfail.add("_dmarc.example.org")
    done = dns_records(config(tmp_path, keys, dns_server=records_dns), "--check", "example.org")
    assert done.returncode == 1
    line = check_lines(done.stdout)["TXT _dmarc.example.org."]
    assert line.startswith("unknown  _dmarc.example.org. TXT ") and "no answer: " in line


def test_check_of_a_domain_without_any_record(tmp_path, keys, records_dns):
    done = dns_records(config(tmp_path, keys, dns_server=records_dns), "--check", "example.net")
    assert done.returncode == 1
    lines = check_lines(done.stdout)
    assert {line.split()[0] for line in lines.values()} == {"missing"}
    assert "; mail-rsa._domainkey.example.net: no rsa key yet" in done.stdout


# ---------------------------------------------------------------- the README

def readme_example() -> tuple[str, str]:
    """The command shown in the README's DNS section, and the output shown after it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## DNS records to publish"):]
    section = section[:section.index("\n## ", 1)]
    match = re.search(r"```sh\n(?P<command>[^\n]*dns-records[^\n]*)\n```\n+```zone\n"
                      r"(?P<output>.*?)```", section, re.DOTALL)
    assert match, "the README's DNS section shows dns-records and its output"
    return match["command"], match["output"]


def test_the_readme_example_is_what_dns_records_prints(tmp_path):
    command, shown = readme_example()
    assert command == "python3 mailbox_appliance.py dns-records hayden.example"
    data_dir = tmp_path / "data"
    key = dkim.key_path(data_dir, "hayden.example", "mail")
    key.parent.mkdir(parents=True)
    key.write_bytes(README_KEY)
    example = (ROOT / "conf" / "example-home.ini").read_text()
    ini = tmp_path / "example-home.ini"
    ini.write_text(example.replace("data_dir = /var/lib/mailbox-appliance",
                                   f"data_dir = {data_dir}"))
    done = dns_records(ini, "hayden.example")
    assert done.returncode == 0, done.stderr
    assert shown == done.stdout
    assert zone_records(shown)                                   # and it reads as a zone
