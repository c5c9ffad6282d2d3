"""What every subcommand shares: exit codes, the usage error, acting as the mail user."""

from __future__ import annotations

import os

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2   # DESIGN 4


class UsageError(Exception):
    """Bad arguments or input: exit 2."""


def become_mail_user(runtime) -> None:
    """Run by root: act as [server] user, so the files made stay the daemon's."""
    from ..server.daemon import drop_privileges
    if os.geteuid() == 0:
        drop_privileges(runtime.config)
