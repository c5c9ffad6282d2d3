#!/usr/bin/env python3
"""mailbox_appliance: a mail server for one small home server. See README.md."""

import sys

if sys.version_info < (3, 11):
    sys.exit("mailbox_appliance needs Python 3.11 or newer (this is %d.%d)" % sys.version_info[:2])

from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

from lib.cli.main import main  # noqa: E402  (the path must be set first)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], SCRIPT_DIR, sys.argv[0]))
