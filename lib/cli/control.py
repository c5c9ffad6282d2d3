"""`reload` and `status`: talking to the running server through its data_dir
(the lock file names its pid; reload.status carries its answer)."""

from __future__ import annotations

import configparser
import os
import signal
import sys
import time
from pathlib import Path

from ..config import schema as config_module
from ..core.errors import ConfigError
from ..store.datadir import ReloadStatus, running_pid
from .common import EXIT_FAILURE, EXIT_OK

RELOAD_WAIT = 30.0          # seconds for the server to answer (a reload takes well under 1 s)
DEFAULT_DATA_DIR = "/var/lib/mailbox-appliance"


def data_dir_of(path: Path) -> Path:
    """[server] data_dir of an INI file; read leniently when the file has errors,
    since a reload is how a running server is told about a file being fixed."""
    try:
        return config_module.load(path, tls_files=False).server.data_dir
    except ConfigError:
        pass
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       inline_comment_prefixes=(";", "#"))
    try:
        parser.read(path)
        value = parser.get("server", "data_dir", fallback=DEFAULT_DATA_DIR).strip()
    except configparser.Error:
        value = DEFAULT_DATA_DIR
    return (path.parent / (value or DEFAULT_DATA_DIR)).resolve()


def cmd_status(args) -> int:
    data_dir = data_dir_of(args.config)
    pid = running_pid(data_dir)
    if pid is None:
        print(f"not running (no server holds {data_dir})")
        return 3                                   # LSB: program is not running
    print(f"running, pid {pid} (data_dir {data_dir})")
    return EXIT_OK


def cmd_reload(args) -> int:
    data_dir = data_dir_of(args.config)
    pid = running_pid(data_dir)
    if pid is None:
        print(f"reload: no server is running on {data_dir} (start it instead)", file=sys.stderr)
        return EXIT_FAILURE
    before = ReloadStatus.read(data_dir)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"reload: cannot signal the server (pid {pid}): {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:
        status = ReloadStatus.read(data_dir)
        if status is not None and status.pid == pid and \
                (before is None or before.pid != pid or status.sequence > before.sequence):
            if status.ok:
                print(f"reloaded: {status.message}")
                return EXIT_OK
            print(f"reload failed, the running config stays: {status.message}",
                  file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.1)
    print(f"reload: the server (pid {pid}) did not answer within {RELOAD_WAIT:g} s; "
          "see its log", file=sys.stderr)
    return EXIT_FAILURE
