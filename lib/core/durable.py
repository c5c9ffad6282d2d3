"""The fsync primitives every commit point is built from (Maildir and queue).

A file is durable once its data is fsync'd; a name in a directory is durable
once the directory is fsync'd. Directory fsyncs are grouped: when eight
threads link messages into the same `new/` at once, one fsync that starts
after all eight links covers them all, so they share it instead of queueing
for eight (the "group commit" of databases).
"""

from __future__ import annotations

import os
import threading


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirState:
    __slots__ = ("tickets", "done", "running", "fd", "reopen")

    def __init__(self):
        self.tickets = 0      # changes announced so far
        self.done = 0         # every ticket up to this one is on disk
        self.running = False  # a thread is in fsync(); only it touches fd
        self.fd = -1          # kept open: saves an open() and close() per fsync
        self.reopen = False   # the path may name a new directory now


class DirSyncer:
    """Makes directory entries durable, sharing fsyncs between threads."""

    def __init__(self):
        self._cond = threading.Condition()
        self._dirs: dict[str, _DirState] = {}

    def sync(self, path: str | os.PathLike) -> None:
        """Return once every change made in `path` before this call is on disk."""
        key = os.fspath(path)
        with self._cond:
            state = self._dirs.get(key)
            if state is None:
                state = self._dirs[key] = _DirState()
            state.tickets += 1
            ticket = state.tickets
            while True:
                if state.done >= ticket:
                    return
                if not state.running:
                    state.running = True
                    covers = state.tickets     # every ticket taken before this fsync starts
                    break
                self._cond.wait()
        try:
            if state.fd < 0 or state.reopen:
                if state.fd >= 0:
                    os.close(state.fd)
                    state.fd = -1
                state.reopen = False
                state.fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(state.fd)
        except BaseException:
            with self._cond:
                state.reopen = True
                state.running = False
                self._cond.notify_all()
            raise
        with self._cond:
            state.done = max(state.done, covers)
            state.running = False
            self._cond.notify_all()

    def forget(self, path: str | os.PathLike) -> None:
        """`path` was (re)created: the next fsync must open it afresh."""
        with self._cond:
            state = self._dirs.get(os.fspath(path))
            if state is not None:
                state.reopen = True


def write_all(fd: int, data) -> None:
    """os.write until everything is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_synced(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Create `path` (it must not exist) holding `data`, fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)


def temp_name(directory: str | os.PathLike, hint: str) -> str:
    """A name in `directory` no other thread or process of ours will pick."""
    return os.path.join(directory, f"{hint}.{os.getpid()}.{threading.get_ident()}.tmp")


def replace_durably(path: str | os.PathLike, data: bytes, temp_dir: str | os.PathLike,
                    syncer: DirSyncer | None = None) -> None:
    """Replace `path` with `data` atomically: a temp file in `temp_dir` (same file
    system), fsync, rename over `path`, fsync `path`'s directory."""
    path = os.fspath(path)
    temp = temp_name(temp_dir, os.path.basename(path))
    write_synced(temp, data)
    try:
        os.rename(temp, path)
    except BaseException:
        unlink_quietly(temp)
        raise
    directory = os.path.dirname(path) or "."
    (syncer.sync if syncer else fsync_dir)(directory)


def unlink_quietly(path: str | os.PathLike) -> bool:
    """Remove a file that may already be gone; True when this call removed it."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
