"""Fuzz: arbitrary input lines never raise inside the POP3 engine and every
answer is +OK, -ERR or a SASL continuation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.pop3.session import Pop3Session, State
from lib.session.engine import ClientInfo
from lib.session.runtime import Services, load_runtime

from ..support import BASE_INI, PASSWORD, ini

commands = st.sampled_from(["USER alice", f"PASS {PASSWORD}", "PASS x", "STAT", "LIST", "LIST 1",
                            "UIDL", "UIDL 9", "RETR 1", "RETR 2", "TOP 1 1", "DELE 1", "RSET",
                            "NOOP", "CAPA", "AUTH PLAIN", "AUTH", "*", "STLS", "QUIT"])
garbage = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("popfuzz")
    path = folder / "fuzz.ini"
    path.write_text(ini(BASE_INI))
    runtime = load_runtime(path)
    services = Services.create(runtime.config)
    services.store.deliver(["alice"], b"Subject: fuzz\n\n.line\n")
    return runtime, services


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(commands.map(str.encode), garbage), max_size=25))
def test_any_input_gets_ok_or_err(setup, lines):
    runtime, services = setup
    if not services.store.snapshot("alice"):          # an earlier example deleted it
        services.store.deliver(["alice"], b"Subject: fuzz\n\n.line\n")
    session = Pop3Session(runtime, services, ClientInfo("127.0.0.1", 1, "pop3"))
    session.greeting()
    try:
        for line in lines:
            if session.state is State.CLOSED:
                break
            step = session.feed_line(line + b"\r\n")
            for reply in step.replies:
                assert reply.to_bytes().startswith((b"+OK", b"-ERR", b"+ "))
                assert reply.to_bytes().endswith(b"\r\n")
            if step.body is not None:
                assert b"".join(step.body).endswith(b".\r\n")
    finally:
        session.close()
