"""check's warnings about [checks] that need no daemon: a missing library."""

from __future__ import annotations

import sys

from lib.cli import preflight_screening

from ..helpers.ini import BASE_INI


def test_a_missing_library_is_named_with_its_packages(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "spf", None)          # import spf now fails
    config = load(BASE_INI + "\n[checks]\nspf = tag\n")
    warnings = preflight_screening.warnings(config)
    assert any(w.startswith("[checks] spf needs the Python package pyspf") and
               "apt install python3-spf" in w for w in warnings), warnings


def test_no_checks_no_warnings(load):
    assert preflight_screening.warnings(load(BASE_INI)) == []
