"""Pid files: start detached processes, check them, stop them by pid (never by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    """The pid in a pid file, if the file exists and the process is alive."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie child counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":
            return None
    except OSError:
        pass
    return pid


def spawn(argv: list[str], *, pid_file: Path, log_file: Path, env: dict | None = None, cwd: Path | None = None) -> int:
    """Start a detached process writing to `log_file`, record its pid, and return it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(pid_file: Path, *, timeout_s: float = 30) -> bool:
    """SIGTERM the recorded process, SIGKILL it after `timeout_s`; True if one was running."""
    return bool(stop_all([pid_file], timeout_s=timeout_s))


def stop_all(pid_files: list[Path], *, timeout_s: float = 30) -> list[Path]:
    """SIGTERM every recorded process at once, wait for them together, SIGKILL what is left after
    `timeout_s`; returns the pid files whose process was running.

    Together, not one after another: each service takes seconds to finish its batch, leave its
    consumer group and close, and six of them in turn could outlast what a launcher is given to stop.
    """
    running: dict[Path, int] = {}
    for pid_file in pid_files:
        pid = read_pid(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        running[pid_file] = pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(read_pid(f) is not None for f in running):
        time.sleep(0.2)
    for pid_file, pid in running.items():
        if read_pid(pid_file) is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        pid_file.unlink(missing_ok=True)
    return list(running)
