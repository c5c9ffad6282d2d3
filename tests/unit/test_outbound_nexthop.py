"""Next hops that need no network: without dnspython, [routes] and address literals."""

from __future__ import annotations

import sys

import pytest

from lib.outbound.nexthop import HopFinder
from lib.outbound.results import AttemptFailed, FailureKind, HostFailure

from ..support import BASE_INI


def test_missing_dnspython_is_a_transient_failure_that_names_the_package(load, monkeypatch):
    cfg = load(BASE_INI)
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    with pytest.raises(AttemptFailed) as caught:
        HopFinder(cfg).hops("remote.example")
    result = caught.value.result
    assert isinstance(result, HostFailure) and result.kind is FailureKind.LOCAL
    assert result.transient
    assert "dnspython" in result.description and "python3-dnspython" in result.description


def test_routes_and_literals_need_no_dns(load, monkeypatch):
    cfg = load(BASE_INI + "\n[routes]\nlan.example = 127.0.0.1:2525\n[relay]\nmx_port = 2626\n")
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    (hop,) = HopFinder(cfg).hops("lan.example")
    assert (hop.addresses, hop.port, hop.kind) == (("127.0.0.1",), 2525, "route")
    (hop,) = HopFinder(cfg).hops("[127.0.0.1]")
    assert (hop.addresses, hop.port) == (("127.0.0.1",), 2626)
    (hop,) = HopFinder(cfg).hops("[IPv6:::1]")
    assert (hop.name, hop.addresses) == ("::1", ("::1",))


def test_a_route_whose_host_cannot_be_resolved_is_a_dns_failure(load, monkeypatch):
    import socket

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    cfg = load(BASE_INI + "\n[routes]\nlan.example = gateway.lan.example:25\n")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(AttemptFailed) as caught:
        HopFinder(cfg).hops("lan.example")
    assert caught.value.result == HostFailure(
        FailureKind.DNS, "could not resolve gateway.lan.example: name or service not known")
