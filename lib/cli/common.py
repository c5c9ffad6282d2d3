"""What every subcommand shares: exit codes, the usage error, where the config
is, acting as the mail user, the configured log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..log import sink
from ..log.events import EventLog

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2   # DESIGN 4

CONFIG_ENV = "MAILBOX_APPLIANCE_CONFIG"
SYSTEM_CONFIG = Path("/etc/mailbox-appliance/mailbox_appliance.ini")
# Where the system config is looked for instead of SYSTEM_CONFIG: for tests and
# packagers, so that the search order can be tried without writing to /etc.
SYSTEM_CONFIG_ENV = "MAILBOX_APPLIANCE_SYSTEM_CONFIG"


class UsageError(Exception):
    """Bad arguments or input: exit 2."""


@dataclass(frozen=True)
class ConfigChoice:
    """The INI file a command uses, and why that one (DESIGN 4's search order)."""
    path: Path
    source: str            # "-c", "env", "system" or "demo"

    def describe(self) -> str:
        """How the file was found, for check's summary and serve's first log line."""
        return {
            "-c": "given with -c",
            "env": f"from ${CONFIG_ENV}",
            "system": "the system config",
            "demo": f"the localhost demo next to the script: {system_config()} does not exist",
        }[self.source]


def system_config() -> Path:
    return Path(os.environ.get(SYSTEM_CONFIG_ENV) or SYSTEM_CONFIG)


def find_config(given: Path | None, script_dir: Path) -> ConfigChoice:
    """-c, else $MAILBOX_APPLIANCE_CONFIG, else /etc/mailbox-appliance/
    mailbox_appliance.ini when it exists, else the demo beside the script; so an
    installed copy finds its real config from cron and sendmail without -c."""
    if given is not None:
        return ConfigChoice(given.absolute(), "-c")
    if os.environ.get(CONFIG_ENV):
        return ConfigChoice(Path(os.environ[CONFIG_ENV]).absolute(), "env")
    system = system_config()
    if _present(system):
        return ConfigChoice(system.absolute(), "system")
    return ConfigChoice((script_dir / "conf" / "mailbox_appliance.ini").absolute(), "demo")


def _present(path: Path) -> bool:
    """Does the file exist? A user who may not look into its folder (0750
    root:mail) counts it as there: it is the server's config, just not theirs."""
    try:
        os.stat(path)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def become_mail_user(runtime) -> None:
    """Run by root: act as [server] user, so the files made stay the daemon's."""
    from ..server.daemon import drop_privileges
    if os.geteuid() == 0:
        drop_privileges(runtime.config)


@contextmanager
def configured_log(runtime) -> Iterator[None]:
    """The server's log ([server] log and log_level) for a command that leaves
    lines in it (sendmail, queue), every line written before the command exits.
    Opened as the caller is (call it after become_mail_user); when it cannot
    be, the lines go to stderr, as serve does."""
    server = runtime.config.server
    try:
        sink.configure(server.log, server.log_level)
    except OSError as error:
        sink.configure("stderr", server.log_level)
        EventLog("cli").error("log_unavailable", key="[server] log", using="stderr",
                              error=f"cannot open {server.log}: {error.strerror or error}")
    try:
        yield
    finally:
        sink.stop()
