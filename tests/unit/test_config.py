"""Config: every key validated, every error names file, line, section and key."""

from __future__ import annotations

import ipaddress

import pytest

from lib.config import schema as config_module
from lib.config.schema import HostPort, Rate
from lib.core.errors import ConfigError

from ..helpers.cli import ROOT
from ..helpers.ini import BASE_INI, config_text


def error_of(load, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value


def assert_names(error: ConfigError, section: str, key: str | None) -> None:
    message = str(error)
    assert error.section == section and error.key == key
    assert f"[{section}]" in message
    if key:
        assert f"{key}:" in message
    assert "\n" not in message


def test_base_config_loads_with_defaults(load, tmp_path):
    cfg = load(BASE_INI)
    assert cfg.server.hostname == "mail.example.org"
    assert cfg.server.data_dir == (tmp_path / "data").resolve()
    assert cfg.server.recipient_delimiter == "+"
    assert cfg.limits.max_message_size == 25 * 1024 * 1024
    assert cfg.limits.max_recipients == 100
    assert cfg.limits.command_timeout == 300
    assert cfg.limits.auth_failures == Rate(5, 600)
    assert cfg.policy.trusted_networks == (ipaddress.ip_network("127.0.0.0/8"),
                                           ipaddress.ip_network("::1/128"))
    assert cfg.relay.mode == "mx" and cfg.relay.mx_port == 25
    assert cfg.relay.retry == (300, 900, 1800, 3600, 7200, 14400)
    assert cfg.relay.give_up_after == 5 * 86400
    assert cfg.tls.enabled is False and cfg.tls.plaintext_auth == "local"
    assert cfg.listen.listeners() == []
    assert dict(cfg.domains) == {"example.org": "*", "example.net": "*"}


def test_config_is_frozen(load):
    cfg = load(BASE_INI)
    with pytest.raises(AttributeError):
        cfg.server = None
    with pytest.raises(TypeError):
        cfg.domains["evil.example"] = "*"


def test_sizes_durations_and_lists_convert(load):
    cfg = load(BASE_INI + """
[limits]
max_message_size = 512K
command_timeout = 90s
auth_failures = 3/1h
[listen]
smtp = 127.0.0.1:2525, [::1]:2525
pop3 = [::]:110
[relay]
retry = 1m, 2h, 1d
nameservers = 127.0.0.1:5353, ::1
[policy]
trusted_networks = 192.168.1.0/24, 2001:db8::/32
filter_command = /usr/bin/spamc -c "with space"
""")
    assert cfg.limits.max_message_size == 512 * 1024
    assert cfg.limits.command_timeout == 90
    assert cfg.limits.auth_failures == Rate(3, 3600)
    assert cfg.listen.smtp == (HostPort("127.0.0.1", 2525), HostPort("::1", 2525))
    assert str(cfg.listen.pop3[0]) == "[::]:110"
    assert cfg.relay.retry == (60, 7200, 86400)
    assert cfg.relay.nameservers == (HostPort("127.0.0.1", 5353), HostPort("::1", 53))
    assert cfg.policy.filter_command == ("/usr/bin/spamc", "-c", "with space")


def test_relative_paths_are_relative_to_the_ini_folder(write_ini, tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c.pem").write_text("x")
    path = write_ini(config_text(log="logs/mail.log", tls="cert = certs/c.pem"))
    cfg = config_module.load(path)
    assert cfg.tls.cert == (tmp_path / "certs" / "c.pem").resolve()
    assert cfg.tls.key == cfg.tls.cert
    assert cfg.server.log == str((tmp_path / "logs" / "mail.log").resolve())


# ---------------------------------------------------------------- one test per error class

def test_unknown_key_names_section_key_and_line(load):
    error = error_of(load, BASE_INI + "\n[limits]\nmax_mesage_size = 10M\n")
    assert_names(error, "limits", "max_mesage_size")
    assert "unknown key" in str(error)
    assert error.line == BASE_INI.count("\n") + 3
    assert f"line {error.line}" in str(error)


def test_unknown_section(load):
    error = error_of(load, BASE_INI + "\n[relays]\nmode = mx\n")
    assert_names(error, "relays", None)
    assert "unknown section" in str(error)


def test_default_section_is_not_special(load):
    error = error_of(load, BASE_INI + "\n[DEFAULT]\nhostname = x.example\n")
    assert_names(error, "DEFAULT", None)


def test_bad_size(load):
    error = error_of(load, BASE_INI + "\n[limits]\nmax_message_size = 25Q\n")
    assert_names(error, "limits", "max_message_size")
    assert "not a size" in str(error)


def test_bad_duration(load):
    error = error_of(load, BASE_INI + "\n[limits]\ncommand_timeout = soon\n")
    assert_names(error, "limits", "command_timeout")
    assert "not a duration" in str(error)


def test_bad_duration_in_list(load):
    error = error_of(load, BASE_INI + "\n[relay]\nretry = 5m, 1x\n")
    assert_names(error, "relay", "retry")


def test_number_out_of_range(load):
    error = error_of(load, BASE_INI + "\n[relay]\nmx_port = 70000\n")
    assert_names(error, "relay", "mx_port")
    assert "out of range" in str(error)


def test_not_a_number(load):
    error = error_of(load, BASE_INI + "\n[limits]\nmax_recipients = many\n")
    assert_names(error, "limits", "max_recipients")


def test_bad_rate(load):
    error = error_of(load, BASE_INI + "\n[limits]\nauth_failures = 5 per 10m\n")
    assert_names(error, "limits", "auth_failures")


def test_bad_choice(load):
    error = error_of(load, BASE_INI + "\n[tls]\nplaintext_auth = sometimes\n")
    assert_names(error, "tls", "plaintext_auth")
    assert "never, local, always" in str(error)


@pytest.mark.parametrize("value", ["127.0.0.1", "localhost:25", "[::1]", "1.2.3.4:70000",
                                   "[fe80::zz]:25", "0.0.0.0:25:1"])
def test_bad_listen_address(load, value):
    error = error_of(load, BASE_INI + f"\n[listen]\nsmtp = {value}\n")
    assert_names(error, "listen", "smtp")


def test_same_address_on_two_listeners(load):
    error = error_of(load, BASE_INI + "\n[listen]\nsmtp = 127.0.0.1:25\npop3 = 127.0.0.1:25\n")
    assert_names(error, "listen", "pop3")


def test_bad_network(load):
    error = error_of(load, BASE_INI + "\n[policy]\ntrusted_networks = 192.168.1.0/33\n")
    assert_names(error, "policy", "trusted_networks")


def test_implicit_tls_listener_needs_tls(load):
    error = error_of(load, BASE_INI + "\n[listen]\nsubmissions = 127.0.0.1:465\n")
    assert_names(error, "listen", "submissions")
    assert "[tls]" in str(error)


def test_missing_certificate_file(load, tmp_path):
    error = error_of(load, BASE_INI + "\n[tls]\ncert = nowhere.pem\n")
    assert_names(error, "tls", "cert")
    assert str((tmp_path / "nowhere.pem").resolve()) in str(error)


def test_missing_key_file(load, tmp_path):
    (tmp_path / "c.pem").write_text("x")
    error = error_of(load, BASE_INI + "\n[tls]\ncert = c.pem\nkey = k.pem\n")
    assert_names(error, "tls", "key")


def test_smarthost_mode_needs_a_smarthost(load):
    error = error_of(load, BASE_INI + "\n[relay]\nmode = smarthost\n")
    assert_names(error, "relay", "smarthost")


def test_smarthost_default_ports_follow_tls_mode(load):
    for tls, port in (("starttls", 587), ("tls", 465), ("none", 25)):
        cfg = load(BASE_INI + f"\n[relay]\nmode = smarthost\nsmarthost = smtp.isp.example\n"
                   f"smarthost_tls = {tls}\n")
        assert cfg.relay.smarthost == HostPort("smtp.isp.example", port)


def test_smarthost_user_needs_password(load):
    error = error_of(load, BASE_INI + "\n[relay]\nsmarthost = s.example:587\nsmarthost_user = u\n")
    assert_names(error, "relay", "smarthost_password")


def test_smarthost_password_needs_tls(load):
    error = error_of(load, BASE_INI + "\n[relay]\nsmarthost = s.example:25\nsmarthost_tls = none\n"
                     "smarthost_user = u\nsmarthost_password = p\n")
    assert_names(error, "relay", "smarthost_password")


def test_bad_smarthost(load):
    error = error_of(load, BASE_INI + "\n[relay]\nsmarthost = bad host:587\n")
    assert_names(error, "relay", "smarthost")


def test_bad_route(load):
    error = error_of(load, BASE_INI + "\n[routes]\nlan.example = 10.0.0.1:notaport\n")
    assert_names(error, "routes", "lan.example")


def test_bad_hostname(load):
    error = error_of(load, config_text(hostname="mail_server!"))
    assert_names(error, "server", "hostname")


def test_bad_delimiter(load):
    error = error_of(load, config_text(server="recipient_delimiter = a"))
    assert_names(error, "server", "recipient_delimiter")


def test_invalid_mailbox_name(load):
    error = error_of(load, config_text(mailboxes="bhayden = {hash}\n../etc = {hash}\n"))
    assert_names(error, "mailboxes", "../etc")


def test_mailbox_value_must_be_a_hash(load):
    error = error_of(load, config_text(mailboxes="bhayden = {hash}\nalice = secret123\n"))
    assert_names(error, "mailboxes", "alice")
    assert "passwd" in str(error)


def test_domain_serving_unknown_mailbox(load):
    error = error_of(load, config_text(domains="example.org = *\nexample.net = alice, carol\n"))
    assert_names(error, "domains", "example.net")
    assert "carol" in str(error)


def test_bad_domain_name(load):
    error = error_of(load, config_text(domains="example.org = *\nexa mple.net = *\n"))
    assert error.section == "domains"


def test_alias_for_a_domain_that_is_not_local(load):
    error = error_of(load, BASE_INI + "sales@elsewhere.example = alice\n")
    assert_names(error, "aliases", "sales@elsewhere.example")


def test_alias_with_bad_target(load):
    error = error_of(load, BASE_INI + "sales = alice@@x\n")
    assert_names(error, "aliases", "sales")


def test_key_set_twice(load):
    error = error_of(load, BASE_INI + "\n[limits]\nmax_recipients = 5\nmax_recipients = 6\n")
    assert_names(error, "limits", "max_recipients")
    assert error.line is not None


def test_section_twice(load):
    error = error_of(load, BASE_INI + "\n[domains]\nexample.com = *\n")
    assert_names(error, "domains", None)


def test_key_before_any_section(load):
    error = error_of(load, "hostname = x\n" + BASE_INI)
    assert error.line == 1 and "section" in str(error)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config_module.load(tmp_path / "absent.ini")
    assert "no such file" in str(caught.value)


def test_error_message_names_the_file(write_ini):
    path = write_ini(BASE_INI + "\n[limits]\nmax_recipients = 0\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert str(caught.value).startswith(f"{path} line ")


def test_shipped_configs_parse():
    cfg = config_module.load(ROOT / "conf" / "mailbox_appliance.ini")
    assert cfg.listen.smtp and all(a.host == "127.0.0.1" for _, a in cfg.listen.listeners())
    assert cfg.server.data_dir == ROOT / "data"
    with pytest.raises(ConfigError) as caught:      # only its TLS files are missing here
        config_module.load(ROOT / "conf" / "example-home.ini")
    assert caught.value.section == "tls"


def test_checks_are_off_by_default_and_parsed_when_given(load):
    off = load(BASE_INI).checks
    assert (off.dnsbl, off.spf, off.dmarc, off.spamd, off.rspamd, off.clamd, off.greylist) == \
        ((), "off", "off", None, "", None, False)
    assert off.scanner_failure == "tempfail" and off.greylist_delay == 180
    on = load(BASE_INI + """
[checks]
dnsbl = zen.spamhaus.org, bl.example.net
spf = reject
dmarc = tag
spamd = 127.0.0.1
spam_reject_score = 7.5
rspamd = http://127.0.0.1:11333/
clamd = run/clamd.ctl
greylist = on
greylist_delay = 5m
scanner_failure = accept
""").checks
    assert on.dnsbl == ("zen.spamhaus.org", "bl.example.net")
    assert str(on.spamd) == "127.0.0.1:783" and on.spam_reject_score == 7.5
    assert on.rspamd == "http://127.0.0.1:11333" and on.clamd.name == "clamd.ctl"
    assert on.clamd.is_absolute() and on.greylist and on.greylist_delay == 300


@pytest.mark.parametrize("key, value", [("spf", "maybe"), ("rspamd", "ftp://x:1"),
                                        ("rspamd", "http://127.0.0.1"), ("dnsbl", "not a zone"),
                                        ("spam_reject_score", "high"), ("greylist", "yes")])
def test_bad_checks_values_name_the_key(load, key, value):
    with pytest.raises(ConfigError) as error:
        load(BASE_INI + f"\n[checks]\n{key} = {value}\n")
    assert error.value.section == "checks" and error.value.key == key


def test_dkim_and_srs_settings(load):
    plain = load(BASE_INI)
    assert plain.dkim.selectors() == {"rsa": "mail"} and plain.relay.srs_secret == ""
    both = load(BASE_INI + "\n[dkim]\nselector = 2026a\nalgorithms = rsa, ed25519\n"
                           "[relay]\nsrs_secret = 0123456789abcdef0123\n")
    assert both.dkim.selectors() == {"rsa": "2026a-rsa", "ed25519": "2026a-ed25519"}
    assert both.relay.srs_secret == "0123456789abcdef0123"


@pytest.mark.parametrize("section, key, value", [
    ("dkim", "selector", "not a label"), ("dkim", "algorithms", "dsa"),
    ("dkim", "algorithms", "rsa, rsa"), ("relay", "srs_secret", "short")])
def test_bad_dkim_and_srs_values_name_the_key(load, section, key, value):
    with pytest.raises(ConfigError) as error:
        load(BASE_INI + f"\n[{section}]\n{key} = {value}\n")
    assert (error.value.section, error.value.key) == (section, key)
