"""Next hops that need no network: without dnspython, [routes] and address literals."""

from __future__ import annotations

import sys

import pytest

from lib.core.errors import TemporaryFailure
from lib.outbound.nexthop import HopFinder

from ..support import BASE_INI


def test_missing_dnspython_is_a_temporary_failure_that_names_the_package(load, monkeypatch):
    cfg = load(BASE_INI)
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    with pytest.raises(TemporaryFailure) as caught:
        HopFinder(cfg).hops("remote.example")
    assert "dnspython" in str(caught.value) and "python3-dnspython" in str(caught.value)


def test_routes_and_literals_need_no_dns(load, monkeypatch):
    cfg = load(BASE_INI + "\n[routes]\nlan.example = 127.0.0.1:2525\n[relay]\nmx_port = 2626\n")
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    (hop,) = HopFinder(cfg).hops("lan.example")
    assert (hop.addresses, hop.port, hop.kind) == (("127.0.0.1",), 2525, "route")
    (hop,) = HopFinder(cfg).hops("[127.0.0.1]")
    assert (hop.addresses, hop.port) == (("127.0.0.1",), 2626)
