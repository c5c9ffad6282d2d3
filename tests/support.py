"""Constants and helpers shared by tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.core import passwords  # noqa: E402

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
