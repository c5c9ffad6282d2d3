"""What lives in data_dir and who may use it: the entries the server owns, the
refusal of folders that are not its own, the lock that keeps a second server
out, and the file through which a running server answers `reload`.

The server touches only what it owns here: `data_dir` itself and the entries
in OWNED_ENTRIES. A data_dir that holds anything else (a typo such as /srv,
/var/lib, or a folder of backups) is refused instead of being taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "serve.lock"           # flock'ed by the running server; holds its pid
RELOAD_STATUS = "reload.status"    # the running server's answer to the last reload
OWNED_ENTRIES = frozenset({
    "mail", "queue",               # Maildirs; the outbound queue
    "dkim",                        # DKIM keys: dkim/<domain>/<selector>.key
    LOCK_FILE, RELOAD_STATUS,
    "greylist.sqlite", "greylist.sqlite-wal", "greylist.sqlite-shm", "greylist.sqlite-journal",
    "lost+found",                  # a data_dir that is a file system of its own
})
# Folders that are never a data_dir: the server would make them the mail user's.
SYSTEM_FOLDERS = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
    "/usr/local", "/var", "/var/lib", "/var/spool", "/var/mail", "/var/log", "/var/tmp",
    "/var/cache", "/var/www", "/var/backups",
))


class DataDirError(Exception):
    """data_dir cannot be used; the text says why (callers name [server] data_dir)."""


def refusal(data_dir: Path) -> str | None:
    """Why `data_dir` must not be used, or None when it may."""
    resolved = data_dir.resolve()
    if resolved in SYSTEM_FOLDERS:
        return (f"{resolved} is a system folder; give the server a folder of its own, "
                "such as /var/lib/mailbox-appliance")
    try:
        foreign = sorted(name for name in os.listdir(resolved) if not _ours(name))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return f"{resolved} is not a folder"
    except PermissionError:
        return None                   # the writability checks say what is wrong
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return (f"{resolved} holds things that are not the server's ({shown}); the server "
                "would make them its own: give it an empty folder of its own")
    return None


def _ours(name: str) -> bool:
    return name in OWNED_ENTRIES or name.startswith(f".{RELOAD_STATUS}.")   # a write cut short


def owned_paths(data_dir: Path) -> list[Path]:
    """The entries of data_dir that belong to the server (those that exist)."""
    return [data_dir / name for name in sorted(OWNED_ENTRIES) if (data_dir / name).exists()
            and name != "lost+found"]


class ServerLock:
    """An exclusive flock on data_dir/serve.lock, held for the server's life, with
    the holder's pid inside so a second server can say who is in the way."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, owner: tuple[int, int] | None = None) -> None:
        """Take the lock or raise DataDirError naming the pid that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = running_pid(self.path.parent)
                raise DataDirError(
                    f"{self.path.parent} is in use by another running server"
                    f"{f' (pid {holder})' if holder else ''}; stop it first, or give this "
                    "one a data_dir of its own") from None
            raise
        if owner is not None:
            os.fchown(fd, *owner)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server that holds data_dir's lock, or None when none does."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)          # we got it: nobody holds it
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReloadStatus:
    """The running server's answer to a reload, written to data_dir/reload.status."""
    pid: int
    sequence: int          # 0 at start, then one more per reload
    ok: bool
    message: str
    time: float

    @classmethod
    def read(cls, data_dir: Path) -> ReloadStatus | None:
        try:
            fields = json.loads((data_dir / RELOAD_STATUS).read_text())
            return cls(pid=int(fields["pid"]), sequence=int(fields["sequence"]),
                       ok=bool(fields["ok"]), message=str(fields["message"]),
                       time=float(fields["time"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, data_dir: Path) -> None:
        """Replace the file atomically (rename), so a reader never sees half of it."""
        path = data_dir / RELOAD_STATUS
        temp = path.with_name(f".{RELOAD_STATUS}.{os.getpid()}")
        temp.write_text(json.dumps({"pid": self.pid, "sequence": self.sequence, "ok": self.ok,
                                    "message": self.message, "time": self.time}))
        os.replace(temp, path)
