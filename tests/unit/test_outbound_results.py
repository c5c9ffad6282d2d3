"""Outbound results: parsing what smtplib returns, the fields decisions use,
one rendering, and how a result is kept in the queue envelope."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.outbound.results import (
    FailureKind,
    HostFailure,
    RemoteReply,
    last_result,
    record,
    where,
)
from lib.store.spool import Envelope, Recipient

GMAIL_550 = (b"5.1.1 The email account that you tried to reach does not exist. Please try\n"
             b"5.1.1 double-checking the recipient's email address for typos or\n"
             b"5.1.1 unnecessary spaces. https://support.example/mail/?p=NoSuchUser")


def test_a_multi_line_reply_with_enhanced_codes_becomes_one_line():
    reply = RemoteReply.parse(550, GMAIL_550)
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == ("The email account that you tried to reach does not exist. Please "
                          "try double-checking the recipient's email address for typos or "
                          "unnecessary spaces. https://support.example/mail/?p=NoSuchUser")
    assert reply.permanent and not reply.transient and not reply.success
    assert reply.render() == "550 5.1.1 " + reply.text
    assert reply.diagnostic() == "smtp; 550 5.1.1 " + reply.text


def test_a_reply_without_an_enhanced_code():
    reply = RemoteReply.parse(421, b"mx.remote.example busy\nplease come back later")
    assert (reply.code, reply.enhanced) == (421, None)
    assert reply.text == "mx.remote.example busy please come back later"
    assert reply.transient and not reply.permanent
    assert reply.render() == "421 mx.remote.example busy please come back later"
    assert RemoteReply.parse(250, b"").render() == "250"


def test_an_enhanced_code_of_another_class_is_only_text():
    # RFC 3463 2: the class must be the reply's; "250 5.1.1" is not a status code
    reply = RemoteReply.parse(250, "5.1.1 odd but fine")
    assert reply.enhanced is None and reply.text == "5.1.1 odd but fine" and reply.success
    assert RemoteReply.parse(550, b"5.1.1x no").enhanced is None


def test_a_garbled_reply_is_transient():
    reply = RemoteReply.parse(-1, b"\xff\xfegarbage")          # smtplib's code for nonsense
    assert reply.transient and not reply.permanent and not reply.success
    assert "garbage" in reply.text


@given(st.integers(-1, 999), st.binary(max_size=300))
def test_any_reply_parses_to_one_bounded_line(code, message):
    reply = RemoteReply.parse(code, message)
    assert reply.code == code
    assert "\n" not in reply.text and "\r" not in reply.text and len(reply.text) <= 900
    assert [reply.success, reply.transient, reply.permanent].count(True) == 1


@pytest.mark.parametrize("kind, enhanced", [
    (FailureKind.REFUSED, "4.4.1"), (FailureKind.TIMEOUT, "4.4.1"), (FailureKind.TLS, "4.4.1"),
    (FailureKind.DNS, "4.4.1"), (FailureKind.DROPPED, "4.4.2"), (FailureKind.LOCAL, "4.3.0")])
def test_a_host_failure_is_transient_and_rendered_from_its_fields(kind, enhanced):
    failure = HostFailure(kind, "could not connect to mx.remote.example [192.0.2.2]: timed out")
    assert failure.transient and not failure.permanent and not failure.success
    assert (failure.code, failure.enhanced) == (451, enhanced)
    assert failure.render() == f"451 {enhanced} {failure.description}"
    assert failure.diagnostic() == f"X-mailbox-appliance; {failure.description}"


def test_where_names_the_host_and_its_address():
    assert where("mx.remote.example", "192.0.2.2") == "mx.remote.example [192.0.2.2]"
    assert where("192.0.2.2", "192.0.2.2") == "[192.0.2.2]"


@pytest.mark.parametrize("result", [
    RemoteReply.parse(550, GMAIL_550),
    RemoteReply(421, None, "busy"),
    HostFailure(FailureKind.TLS, "TLS with [192.0.2.2] failed (WRONG_VERSION_NUMBER)")])
def test_a_result_survives_the_queue_envelope(result):
    recipient = Recipient("x@remote.example")
    assert last_result(recipient) is None                      # not tried yet
    record(recipient, result)
    envelope = Envelope("018C2B3D4E5F0A1B", "a@example.org", [recipient], 0.0)
    [loaded] = Envelope.from_json(envelope.to_json()).recipients
    assert last_result(loaded) == result
    assert (loaded.reply_code, loaded.reply_enhanced) == (result.code, result.enhanced)


def test_a_failure_kind_from_a_newer_version_still_reads():
    recipient = Recipient("x@remote.example", reply_code=451, reply_enhanced="4.4.1",
                          reply_text="something new", failure="quantum")
    assert last_result(recipient) == HostFailure(FailureKind.LOCAL, "something new")
