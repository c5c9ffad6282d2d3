"""Fuzz: arbitrary input never raises inside the SMTP engine and always gets
well-formed replies."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.session.engine import ClientInfo
from lib.session.runtime import Services, load_runtime
from lib.smtp.session import SmtpSession, State

from ..support import BASE_INI, ini

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -][^\r\n]*\r\n$")

verbs = st.sampled_from(["EHLO x", "HELO x", "MAIL FROM:<a@example.com>", "MAIL FROM:<>",
                         "RCPT TO:<bhayden@example.org>", "RCPT TO:<x@remote.example>",
                         "RCPT TO:<nobody@example.org>", "DATA", "RSET", "NOOP", "VRFY x",
                         "AUTH PLAIN", "AUTH LOGIN", "STARTTLS", "HELP", "*", "QUIT"])
garbage = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))
lines = st.lists(st.one_of(verbs.map(str.encode), garbage), max_size=25)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "fuzz.ini"
    path.write_text(ini(BASE_INI))
    runtime = load_runtime(path)
    return runtime, Services.create(runtime.config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines, st.binary(max_size=300))
def test_any_input_gets_well_formed_replies(setup, commands, body):
    runtime, services = setup
    session = SmtpSession(runtime, services, ClientInfo("192.0.2.1", 1, "smtp"))
    session.greeting()
    for line in commands:
        if session.state is State.CLOSED:
            break
        if session.receiving_data:
            step = session.feed_data(body + b"\r\n.\r\n")
        else:
            step = session.feed_line(line + b"\r\n")
        for reply in step.replies:
            data = reply.to_bytes()
            for one in data.splitlines(keepends=True):
                assert REPLY_LINE.match(one), data
    session.close()
