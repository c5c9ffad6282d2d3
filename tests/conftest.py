"""Shared fixtures: configs written to disk, one password hash per session."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import config as config_module  # noqa: E402
from lib import passwords  # noqa: E402
from lib.router import Router  # noqa: E402

PASSWORD = "correct horse"
HASH = passwords.hash_password(PASSWORD)   # computed once: scrypt is slow on purpose


def ini(text: str) -> str:
    """Dedent an INI snippet and put the test hash in place of {hash}."""
    return textwrap.dedent(text).replace("{hash}", HASH)


BASE_INI = """
[server]
hostname = mail.example.org
data_dir = data
log = stderr

[domains]
example.org = *
example.net = *

[mailboxes]
bhayden = {hash}
alice = {hash}

[aliases]
postmaster = bhayden
"""


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
