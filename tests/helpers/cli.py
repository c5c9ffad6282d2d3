"""The project's command line (`mailbox_appliance.py`) run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "mailbox_appliance.py"
SYSTEM_CONFIG_ENV = "MAILBOX_APPLIANCE_SYSTEM_CONFIG"


def run_cli(*args: str, config: Path | None = None, stdin: str | bytes | None = None,
            env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60,
            python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """`mailbox_appliance.py [-c CONFIG] ARGS...`; stdout and stderr as text.

    $MAILBOX_APPLIANCE_CONFIG is not inherited from the test run and no system
    config is looked for (`env` may set either), so a test without `config` gets
    the project's own default config."""
    full_env = {k: v for k, v in os.environ.items() if k != "MAILBOX_APPLIANCE_CONFIG"}
    # A config installed on this machine (/etc/mailbox-appliance) must not stand
    # in for the project's own default.
    full_env[SYSTEM_CONFIG_ENV] = str(ROOT / "no-system-config")
    full_env.update(env or {})
    options = ["-c", str(config)] if config is not None else []
    done = subprocess.run([python, str(SCRIPT), *options, *args],
                          input=stdin.encode() if isinstance(stdin, str) else stdin,
                          capture_output=True, timeout=timeout, env=full_env, cwd=cwd)
    # Decoded here rather than with text=True: a broken byte must not fail the test.
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))
