"""The content filter ([policy] filter_command): an outside program that
accepts, rejects or defers a message."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Config
from ..core import replies
from ..core.replies import Reply


@dataclass(frozen=True)
class FilterVerdict:
    reply: Reply | None     # None: accepted
    detail: str             # for the log


def run_filter(config: Config, message: Path, environment: dict[str, str]) -> FilterVerdict:
    """Run [policy] filter_command with the message on stdin.

    Exit 0 accepts, exit 1 rejects (550 5.7.1), anything else — another exit
    code, a crash, a timeout, a missing program — is a temporary failure
    (451 4.7.1): a broken filter must delay mail, never lose or pass it.
    The filter runs in a process group of its own, so on timeout everything
    it started is killed; only its own exit is waited for, so a helper it
    leaves running in the background does not hold the message up.
    """
    command = config.policy.filter_command
    env = {**os.environ, **environment}
    try:
        with open(message, "rb") as stdin, tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL,
                                       stderr=stderr, env=env, close_fds=True,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=config.policy.filter_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return FilterVerdict(replies.FILTER_TEMPFAIL,
                                     f"filter timed out after {config.policy.filter_timeout:g}s")
            stderr.seek(0)
            said = stderr.read(4096).decode("utf-8", "replace").strip().splitlines()
    except OSError as error:
        return FilterVerdict(replies.FILTER_TEMPFAIL, f"filter could not run: {error}")
    detail = f"filter exit {code}" + (f": {said[0][:200]}" if said else "")
    if code == 0:
        return FilterVerdict(None, detail)
    if code == 1:
        return FilterVerdict(replies.FILTER_REJECTED, detail)
    return FilterVerdict(replies.FILTER_TEMPFAIL, detail)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
