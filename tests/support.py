"""Shim: the old home of the shared test constants, kept so that test modules not
yet moved to tests/helpers/ still import. New code imports from tests.helpers."""

from __future__ import annotations

from .helpers.cli import ROOT
from .helpers.ini import BASE_INI, HASH, PASSWORD, ini

__all__ = ["BASE_INI", "HASH", "PASSWORD", "ROOT", "ini"]
