"""Real processes for fault tests: services as subprocesses, plus a Kafka broker and a PostgreSQL
cluster owned by the test (so they can be stopped without touching the shared ones).

Everything here is started by pid and stopped by that pid; nothing is ever found or killed by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from shared.settings import Settings

# The command line and the port choice are the bench's own (one copy); the harness keeps Popen handles
# rather than the bench's pid files because its tests SIGKILL and restart single processes.
from switchboard.bench.processes import free_port, service_argv

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
SHARED_KAFKA_PORTS = {9092, 9093}
SHARED_PG_PORT = 5432


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(start: int, step: int = 100, tries: int = 50) -> int:
    """The first `start + k*step` such that it and the next port are free (a broker and its controller)."""
    for k in range(tries):
        port = start + k * step
        if port in SHARED_KAFKA_PORTS:
            continue
        if port_is_free(port) and port_is_free(port + 1):
            return port
    raise RuntimeError(f"no free port pair from {start}")


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment for a service: every setting as `SWITCHBOARD_<NAME>`, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    for name, value in settings.model_dump().items():
        if value is None:  # unset optional settings stay unset (the string "None" would be a value)
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        env[f"SWITCHBOARD_{name.upper()}"] = str(value)
    env.update(extra)
    return env


class ServiceProcess:
    """One process run as `python -m switchboard run <command> --port <port>`, its output in a log file.

    `name` tells instances apart (`assigner-api-2`); `command` is what `switchboard run` starts (the
    name when not given). `overlay` is added to the environment at each start, e.g. to arm a fault
    point (shared/faults.py) for the next run only.
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        log_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        command: str | None = None,
    ):
        self.name = name
        self.command = command or name
        self.settings = settings
        self.port = port or free_port()
        self.log_file = Path(log_dir) / f"{name}-{self.port}.log"
        self.env = env if env is not None else service_env(settings)
        self.overlay: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """True while the process we started runs."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Spawn the process (its stdout and stderr appended to the log file)."""
        if self.alive():
            raise RuntimeError(f"{self.name} already runs as pid {self.pid}")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                service_argv(self.command, self.port, PYTHON),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **self.overlay},
                cwd=REPO,
                start_new_session=True,
            )
        self.starts += 1

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll /readyz until 200; fail with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        last = None
        async with httpx.AsyncClient(timeout=3) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    r = await client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return
                    last = r.text
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within {timeout}s (last: {last}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the process we started, by its pid, and reap it."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def terminate(self, timeout: float = 25.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode

    async def restart(self, timeout: float = 90.0) -> None:
        """SIGKILL (if running), start again, wait until ready."""
        self.kill()
        self.start()
        await self.wait_ready(timeout)

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


class Fleet:
    """Services started together; on exit every process this fleet started is stopped by pid.

    `names` are services to run once each, or a topology: instance name -> (`switchboard run`
    command, extra environment), e.g. {"assigner-api-1": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "api"})}.
    """

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        names: tuple[str, ...] | dict[str, tuple[str, dict]],
        env: dict[str, str] | None = None,
    ):
        topology = names if isinstance(names, dict) else {n: (n, {}) for n in names}
        base = env if env is not None else service_env(settings)
        self.services = {
            n: ServiceProcess(n, settings, log_dir, command=command, env={**base, **extra})
            for n, (command, extra) in topology.items()
        }

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    async def __aenter__(self) -> Fleet:
        try:
            for svc in self.services.values():
                svc.start()
            await asyncio.gather(*(svc.wait_ready() for svc in self.services.values()))
        except BaseException:
            self.stop_all()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """SIGKILL every process of this fleet that still runs."""
        for svc in self.services.values():
            svc.kill()


# ---- a Kafka broker of the test's own ------------------------------------------------------


class OwnKafka:
    """A single-node KRaft broker on its own ports and data dir (deploy.local.kafka), never the shared one."""

    def __init__(self, port: int | None = None):
        self.chosen = port is None
        self.port = port or self._pick_port()
        if self.port in SHARED_KAFKA_PORTS:
            raise ValueError("the shared broker's port is not ours to use")
        self.started = False

    @staticmethod
    def _pick_port() -> int:
        # From a random first pair: tests in other checkouts pick ports at the same moment.
        return free_port_pair(29092 + 100 * random.randrange(30))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start (format on first use) and wait until it answers metadata.

        A first start that fails on a port we chose (another test took it meanwhile) moves to
        another port; later starts keep the port the services were given.
        """
        from deploy.local import kafka

        for attempt in range(3):
            try:
                # deploy.local.kafka probes with asyncio.run, so it runs outside this event loop.
                await asyncio.to_thread(kafka.start, self.port, wait_s=120, echo=lambda *_: None)
                self.started = True
                return
            except RuntimeError:
                if self.started or not self.chosen or attempt == 2:
                    raise
                await asyncio.to_thread(kafka.stop, self.port)  # by its pid file, if it still runs
                shutil.rmtree(kafka.layout(self.port).home, ignore_errors=True)
                self.port = self._pick_port()

    async def stop(self) -> None:
        """Stop it gracefully by its pid file."""
        from deploy.local import kafka

        await asyncio.to_thread(kafka.stop, self.port)

    def kill(self) -> None:
        """SIGKILL the broker by the pid this project recorded for it."""
        from deploy.local import kafka, process

        pid = process.read_pid(kafka.layout(self.port).pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    async def destroy(self) -> None:
        """Stop it and remove its data dir."""
        from deploy.local import kafka

        await self.stop()
        shutil.rmtree(kafka.layout(self.port).home, ignore_errors=True)


# ---- a PostgreSQL cluster of the test's own ------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are required")
    return Path(initdb).parent


class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb in a temp dir, its own port), stoppable at will."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        if self.port == SHARED_PG_PORT:
            raise ValueError("the shared cluster's port is not ours to use")
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="sb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [*self._as_postgres, *argv], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout}\n{result.stderr}\n{self.log_tail()}")

    def init(self) -> None:
        """initdb with trust auth for the local superuser."""
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
        )

    def start(self) -> None:
        """Start on loopback and wait until it accepts connections."""
        # fsync=off survives an immediate stop (the OS keeps its page cache); synchronous_commit
        # stays on, since an immediate stop loses WAL still in shared memory.
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop it (`immediate` is a crash as far as the clients can tell)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop if running and delete every file of the cluster."""
        if self.running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


async def terminate_backends(admin_url: str, database: str) -> int:
    """pg_terminate_backend every session on `database` except our own; returns how many."""
    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()


async def readyz(client: httpx.AsyncClient, url: str) -> int | None:
    """The /readyz status code, or None when nothing answers."""
    try:
        return (await client.get(f"{url}/readyz", timeout=5)).status_code
    except httpx.HTTPError:
        return None
