"""Fixtures for every test: configs written to disk and parsed, routers, the
test certificate. Helpers (plain functions and classes) live in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.config import schema as config_module
from lib.config.router import Router

from .helpers.ini import ini
from .helpers.tls import make_certificate


@pytest.fixture
def write_ini(tmp_path):
    """write_ini(text, name="test.ini") -> path of that INI ({hash} filled in) in tmp_path."""
    def write(text: str, name: str = "test.ini") -> Path:
        path = tmp_path / name
        path.write_text(ini(text), encoding="utf-8")
        return path
    return write


@pytest.fixture
def load(write_ini):
    """load(text) -> Config parsed from text written to disk."""
    def parse(text: str):
        return config_module.load(write_ini(text))
    return parse


@pytest.fixture
def router(write_ini):
    """router(text) -> Router over that config."""
    def build(text: str) -> Router:
        return Router(config_module.load(write_ini(text)))
    return build


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """(cert.pem, key.pem) for mail.example.org and 127.0.0.1, made at test time."""
    return make_certificate(tmp_path_factory.mktemp("tls"))
