"""checks/dns.py without sockets: optional libraries named by their packages
when missing, one shared Resolver per name-server list."""

from __future__ import annotations

import sys

import pytest

from lib.checks import dmarc, dnsbl, spf
from lib.checks.dns import DnsFailure, MissingLibrary, Resolver, forget_resolvers, require, resolver
from lib.config.schema import HostPort

from ..helpers.checks import message, screened


@pytest.fixture
def missing(monkeypatch):
    """missing("spf") makes that import fail, as on a machine without the package."""
    def hide(module: str) -> None:
        for name in list(sys.modules):
            if name == module or name.startswith(module + "."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)       # import raises ImportError
    return hide


def test_require_returns_the_module():
    assert require("spf", "[checks] spf").__name__ == "spf"
    assert require("dns.resolver", "x").__name__ == "dns.resolver"


def test_require_refuses_libraries_it_does_not_know():
    with pytest.raises(ValueError):
        require("os", "x")


@pytest.mark.parametrize("module, debian, pypi", [
    ("spf", "python3-spf", "pyspf"), ("dkim", "python3-dkim", "dkimpy"),
    ("dns", "python3-dnspython", "dnspython")])
def test_a_missing_library_names_its_debian_and_pypi_packages(missing, module, debian, pypi):
    missing(module)
    with pytest.raises(MissingLibrary) as caught:
        require(module, "[checks] something")
    text = str(caught.value)
    assert text.startswith("[checks] something needs the Python package")
    assert f"apt install {debian}" in text and f"pip install {pypi}" in text
    assert "\n" not in text


def test_the_public_suffix_list_names_pypi_only(missing):
    missing("publicsuffixlist")
    with pytest.raises(MissingLibrary, match=r"\(pip install publicsuffixlist\)$"):
        require("publicsuffixlist", "[checks] dmarc")


def test_the_checks_raise_missing_library(missing, monkeypatch):
    missing("spf")
    with pytest.raises(MissingLibrary, match="pyspf"):
        spf.check(screened(), "tag", Resolver())
    missing("dkim")
    with pytest.raises(MissingLibrary, match="dkimpy"):
        dmarc.check(screened(), message(), "tag", Resolver(), spf_result="pass")
    missing("dns")
    with pytest.raises(MissingLibrary, match="dnspython"):
        dnsbl.check("192.0.2.1", ["zen.example"], Resolver(), lifetime=0.1)


def test_one_resolver_per_name_server_list():
    forget_resolvers()
    one = (HostPort("127.0.0.1", 5353),)
    assert resolver(one) is resolver(one)
    assert resolver(one) is not resolver((HostPort("127.0.0.1", 5354),))
    first = resolver(one)
    forget_resolvers()
    assert resolver(one) is not first
    forget_resolvers()


def test_no_time_left_is_a_failure_without_a_question():
    with pytest.raises(DnsFailure, match="no time left"):
        Resolver((HostPort("127.0.0.1", 9),)).records("example.org", "A", lifetime=0)
