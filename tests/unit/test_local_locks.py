"""deploy.local.locks: a tool's build or install holds across threads and processes (pytest-xdist workers)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy.local.locks import SharedLock
from deploy.local.paths import REPO

HOLDER = """
import sys
from pathlib import Path
from deploy.local.locks import SharedLock
with SharedLock(lambda: Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def _free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock this check took
    return True


def test_another_process_holding_the_lock_keeps_it_until_it_lets_go(tmp_path):
    path = tmp_path / "locks" / "tool.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not _free(path)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        with SharedLock(lambda: path):
            assert not _free(path)
        assert _free(path)
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_take_turns(tmp_path):
    lock = SharedLock(lambda: tmp_path / "tool.lock")
    inside, overlaps = [], []

    def work():
        for _ in range(50):
            with lock:
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_a_lock_that_cannot_be_taken_leaves_nothing_held(tmp_path):
    lock = SharedLock(lambda: tmp_path / "missing-parent-is-a-file" / "x.lock")
    (tmp_path / "missing-parent-is-a-file").write_text("not a directory")
    with pytest.raises(OSError):
        with lock:
            pass
    # The thread lock was released: the same lock (with a usable path) can be taken again.
    lock._path = lambda: tmp_path / "ok.lock"
    with lock:
        pass
