"""The system under test: the services the bench starts (or a running stack), their own database
and topics, and the processes whose resources the report shows."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
from rich.console import Console

from shared.settings import Settings
from switchboard.bench.options import Options
from switchboard.bench.processes import REPO, ServiceProcesses, free_port, service_argv, wait_ready
from switchboard.bench.resources import Watched, kafka_pid, listener_pid, postgres_pid
from switchboard.services import PROCESSES

console = Console(stderr=True)
SERVICES = ("ingest", "assigner", "idle_monitor", "stats", "delivery")  # what a running stack (--*-url) offers


class Stack:
    """The four services: started here as subprocesses (stopped by pid at the end) or already running."""

    def __init__(self, settings: Settings, opts: Options, run_id: str):
        self.opts = opts
        self.run_id = run_id
        self.external = bool(opts.assigner_url or opts.ingest_url)
        self.watched = Watched()
        self.ports: dict[str, int] = {}
        self.processes = ServiceProcesses(run_dir(run_id))
        if self.external:
            if not (opts.assigner_url and opts.ingest_url and opts.stats_url):
                raise ValueError("a running stack needs --ingest-url, --assigner-url and --stats-url")
            self.settings = settings
            self.urls = {
                "ingest": opts.ingest_url.rstrip("/"),
                "assigner": opts.assigner_url.rstrip("/"),
                "stats": opts.stats_url.rstrip("/"),
            }
            if opts.delivery_url:
                self.urls["delivery"] = opts.delivery_url.rstrip("/")
            self.database_url = settings.database_url
        else:
            self.database_url = with_db(settings.database_url, opts.database)
            self.ports = {name: free_port() for name in PROCESSES}
            self.settings = settings.model_copy(
                update=dict(
                    database_url=self.database_url,
                    topic_prefix=f"bench{run_id}.",
                    auth_secret=secrets.token_urlsafe(36),
                    dev_mode=False,
                    topic_partitions=opts.partitions,
                    **{f"{n}_port": p for n, p in self.ports.items()},
                )
            )
            self.urls = {n: f"http://127.0.0.1:{p}" for n, p in self.ports.items()}

    def env(self) -> dict:
        """The services' environment: this run's settings, nothing else of the caller's SWITCHBOARD_*."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        for key in ("SWITCHBOARD_LOCAL_DIR", "SWITCHBOARD_CACHE_DIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(
            {
                "SWITCHBOARD_DATABASE_URL": s.database_url,
                "SWITCHBOARD_TOPIC_PREFIX": s.topic_prefix,
                "SWITCHBOARD_AUTH_SECRET": s.auth_secret,
                "SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "SWITCHBOARD_TOPIC_PARTITIONS": str(s.topic_partitions),
                "SWITCHBOARD_LOG_LEVEL": "WARNING",
                "SWITCHBOARD_INGEST_URL": self.urls["ingest"],
                "SWITCHBOARD_STATS_URL": self.urls["stats"],
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        for name, port in self.ports.items():
            env[f"SWITCHBOARD_{name.upper()}_PORT"] = str(port)
        return env

    async def start(self) -> None:
        """Start the services (or check the running ones) and find every process to watch."""
        if not self.external:
            await recreate_database(self.settings.database_url, self.opts.database)
            env = self.env()
            for name, (_, overrides) in PROCESSES.items():
                self.watched.pids[name] = self.processes.start(
                    name, service_argv(name, self.ports[name]), {**env, **overrides}
                )
        await wait_ready(self.urls, 120, None if self.external else self.processes)
        if self.external:
            for name in SERVICES:
                url = self.urls.get(name)
                if url:
                    pid = await asyncio.to_thread(listener_pid, urlparse(url).port or 80)
                    if pid:
                        self.watched.pids[name] = pid
        kafka_port = int(self.settings.kafka_bootstrap_servers.rsplit(":", 1)[1])
        broker = await asyncio.to_thread(kafka_pid, kafka_port)
        if broker:
            self.watched.pids["kafka broker"] = broker
        self.watched.postgres_pid = await asyncio.to_thread(
            postgres_pid, await data_directory(self.database_url), urlparse(self.database_url).port or 5432
        )
        self.watched.pids["bench client"] = os.getpid()

    async def stop(self) -> None:
        """Stop what was started here; drop its database and topics unless `--keep`."""
        if self.external:
            return
        await self.processes.stop_all(timeout_s=30)
        if not self.opts.keep:
            await delete_topics(self.settings.kafka_bootstrap_servers, self.settings.topic_prefix)
            await drop_database(self.settings.database_url, self.opts.database)


def run_dir(run_id: str) -> Path:
    """Where a run keeps its processes' pid and log files (under SWITCHBOARD_LOCAL_DIR, default .local/)."""
    return Path(os.environ.get("SWITCHBOARD_LOCAL_DIR", REPO / ".local")) / "bench" / run_id


def with_db(url: str, name: str) -> str:
    """The same server as `url`, database `name`."""
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def _ident(name: str) -> str:
    # A database name cannot be a bind parameter: it is quoted as an identifier instead.
    return '"' + name.replace('"', '""') + '"'


async def recreate_database(base_url: str, name: str) -> None:
    """An empty database `name` on the server of `base_url`, whatever was there before."""
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {_ident(name)}")
    finally:
        await admin.close()


async def data_directory(url: str) -> str | None:
    """The server's data directory (where postmaster.pid is), or None when this role may not read it."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


async def drop_database(base_url: str, name: str) -> None:
    """DROP DATABASE `name`, disconnecting whoever still holds it."""
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the bench's own topics (those of a `bench` prefix), reporting rather than raising a failure."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not prefix.startswith("bench"):
        return  # only ever the bench's own topics
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:
        console.print(f"[yellow]could not delete bench topics: {exc!r}[/yellow]")
    finally:
        await admin.close()


class OwnService:
    """One service subprocess on a free loopback port with a throwaway database and topic prefix.

    `async with OwnService(settings, "ingest") as base_url`: started, ready, then stopped by pid, its
    database dropped and its topics deleted. `pid` is the process the figures are read from.
    """

    def __init__(self, settings: Settings, service: str):
        self.settings = settings
        self.service = service
        self.run_id = secrets.token_hex(4)
        self.db_name = f"sb_bench_{self.run_id}"
        self.prefix = f"bench-{self.run_id}."
        self.processes = ServiceProcesses(run_dir(f"{service}-{self.run_id}"))
        self.pid: int | None = None

    async def __aenter__(self) -> str:
        base = self.settings.database_url
        await recreate_database(base, self.db_name)
        port = free_port()
        env = dict(
            os.environ,
            SWITCHBOARD_DATABASE_URL=with_db(base, self.db_name),
            SWITCHBOARD_TOPIC_PREFIX=self.prefix,
            SWITCHBOARD_AUTH_SECRET=self.settings.auth_secret,
            SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS=self.settings.kafka_bootstrap_servers,
            SWITCHBOARD_HTTP_HOST="127.0.0.1",
            SWITCHBOARD_LOG_LEVEL="WARNING",
        )
        if self.settings.dev_mode:
            env["SWITCHBOARD_DEV_MODE"] = "1"
        self.pid = self.processes.start(self.service, service_argv(self.service, port), env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            await wait_ready({self.service: base_url}, 120, self.processes)
        except RuntimeError as exc:
            await self.__aexit__()
            raise SystemExit(str(exc)) from None
        console.print(
            f"{self.service} started (pid {self.pid}) on {base_url}, topics {self.prefix}*, database "
            f"{self.db_name}, log {self.processes.log_file(self.service)}"
        )
        return base_url

    async def __aexit__(self, *exc) -> None:
        await self.processes.stop_all(timeout_s=30)
        await drop_database(self.settings.database_url, self.db_name)
        await delete_topics(self.settings.kafka_bootstrap_servers, self.prefix)
