"""Fixtures for the integration tests: real server processes, raw clients, a DNS
server and sink SMTP servers; each one is stopped or closed when its test ends."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from ..helpers.clients import SmtpClient
from ..helpers.net import HOST
from ..helpers.outbound import BannerServer, FakeDNS, Sink
from ..helpers.server import ServerProcess, new_server


@pytest.fixture
def servers(tmp_path):
    """servers(name="server", start=True, **server_config options) -> a ServerProcess
    in tmp_path/name, running unless start=False. Every one is stopped (by PID)
    when the test ends."""
    made: list[ServerProcess] = []

    def make(name: str = "server", start: bool = True, **options) -> ServerProcess:
        server = new_server(tmp_path / name, **options)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def raw_smtp(servers):
    """raw_smtp(server, kind="smtp") -> an SmtpClient on that listener; every client
    is closed at the end (before the servers are stopped)."""
    opened: list[SmtpClient] = []

    def make(server: ServerProcess, kind: str = "smtp") -> SmtpClient:
        client = SmtpClient(server.port(kind))
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def dns():
    """A started FakeDNS; stopped when the test ends."""
    server = FakeDNS().start()
    yield server
    server.stop()


@pytest.fixture
def sinks():
    """sinks(host=..., port=..., **Sink options) -> a started Sink (or BannerServer
    with banner=...); every one is stopped when the test ends."""
    started: list[Sink | BannerServer] = []

    def start(host: str = HOST, port: int | None = None, banner: str | None = None,
              **options) -> Sink | BannerServer:
        server = BannerServer(host, port, banner) if banner else Sink(host, port, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def public_folder():
    """A folder other users can traverse (tmp_path is under /tmp/pytest-of-root, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="mailbox-appliance-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- scanner daemons
# The real spamd, rspamd and clamd (tests/helpers/daemons.py), each started once
# per session (they take a while to start) and stopped by PID at its end.

@pytest.fixture(scope="session")
def spamd_daemon():
    """A running spamd on 127.0.0.1 (its folder is under /tmp: spamd started as
    root reads its config as `nobody`, who cannot enter pytest's folders)."""
    from ..helpers.daemons import public_folder, start_spamd
    folder = public_folder("mailbox-appliance-spamd-")
    try:
        daemon = start_spamd(folder / "spamd")
        yield daemon
        daemon.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def rspamd_daemon(tmp_path_factory):
    """A running rspamd whose normal worker listens on 127.0.0.1."""
    from ..helpers.daemons import start_rspamd
    daemon = start_rspamd(tmp_path_factory.mktemp("rspamd"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def clamd_daemon(tmp_path_factory):
    """A running clamd on 127.0.0.1 and on a unix socket in its folder."""
    from ..helpers.daemons import start_clamd
    daemon = start_clamd(tmp_path_factory.mktemp("clamd"))
    yield daemon
    daemon.stop()
