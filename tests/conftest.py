"""Shared fixtures: configs written to disk, routers, real server processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.config import schema as config_module  # noqa: E402
from lib.config.router import Router  # noqa: E402

from .harness import make_certificate, new_server  # noqa: E402
from .support import BASE_INI, HASH, PASSWORD, ROOT, ini  # noqa: F401  (re-exported)


@pytest.fixture
def write_ini(tmp_path):
    """write_ini(text) -> path of an INI file in a fresh folder."""
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


@pytest.fixture
def servers(tmp_path):
    """servers(name="server", start=True, **config options) -> a running ServerProcess.

    Every server started is stopped (by PID) when the test ends."""
    started = []

    def start(name: str = "server", start: bool = True, **options):
        server = new_server(tmp_path / name, **options)
        started.append(server)
        if start:
            server.start()
        return server

    yield start
    for server in started:
        server.stop()
