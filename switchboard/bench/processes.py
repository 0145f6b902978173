"""Services as subprocesses: started on free loopback ports, waited for, stopped by the pid recorded
when they were started (never found or stopped by name).

The bench's stack runs on this module; nothing in it knows the bench's options, so a test harness
(tests/e2e/procs.py) can start and stop its services with it too.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from deploy.local import process
from switchboard.bench.client import HttpError, http_get

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_argv(name: str, port: int, python: str = sys.executable) -> list[str]:
    """The command line that runs one service process (`switchboard run <name> --port <port>`)."""
    return [python, "-m", "switchboard", "run", name, "--port", str(port)]


class ServiceProcesses:
    """Named processes started here, each with a pid file and a log file in one directory."""

    def __init__(self, directory: Path, cwd: Path = REPO):
        self.dir = directory
        self.cwd = cwd
        self.pid_files: dict[str, Path] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Spawn a detached process (its output appended to `<name>.log`); returns its pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid_files[name] = self.dir / f"{name}.pid"
        return process.spawn(argv, pid_file=self.pid_files[name], log_file=self.log_file(name), env=env, cwd=self.cwd)

    def log_file(self, name: str) -> Path:
        """Where the process's stdout and stderr go."""
        return self.dir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The last `chars` characters the process wrote."""
        try:
            return self.log_file(name).read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def running(self, name: str) -> bool:
        """True while the process started under this name runs (a zombie counts as gone)."""
        return name in self.pid_files and process.read_pid(self.pid_files[name]) is not None

    async def stop_all(self, timeout_s: float = 30) -> None:
        """SIGTERM every process started here, SIGKILL those still running after `timeout_s`."""
        await asyncio.gather(
            *(asyncio.to_thread(process.stop, pid_file, timeout_s=timeout_s) for pid_file in self.pid_files.values())
        )


async def wait_ready(urls: dict[str, str], timeout_s: float, processes: ServiceProcesses | None = None) -> None:
    """Poll every URL's /readyz until it answers 200; fail at once, with its log, if a process exits."""
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        for name in list(pending):
            try:
                status, _ = await http_get(urls[name], "/readyz", timeout=3)
                if status == 200:
                    pending.discard(name)
            except HttpError:
                pass
            if processes is not None and not processes.running(name):
                raise RuntimeError(f"{name} exited during start-up:\n{processes.log_tail(name)}")
        if not pending:
            break
        if time.monotonic() > deadline:
            where = f" (logs in {processes.dir})" if processes is not None else ""
            raise RuntimeError(f"not ready after {timeout_s:.0f}s: {', '.join(sorted(pending))}{where}")
        await asyncio.sleep(0.3)
