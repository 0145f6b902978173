"""Locks that hold across threads and processes: a tool is built or installed once at a time.

The tests prefetch tools in a background thread while other tests run, and pytest-xdist runs the
suite in several processes: each of them may ask for the same build, download or apt-get at once.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


class SharedLock:
    """A thread lock plus an exclusive `flock` on a file: one holder in the process and on the machine."""

    def __init__(self, path: Callable[[], Path]):
        self._path = path  # read on use: the cache directory may be set after import
        self._thread = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> SharedLock:
        self._thread.acquire()
        try:
            path = self._path()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread.release()


def machine_lock(name: str) -> SharedLock:
    """A lock shared by every checkout on this machine (apt-get: dpkg allows one at a time)."""
    return SharedLock(lambda: Path(tempfile.gettempdir()) / f"switchboard-{name}.lock")
