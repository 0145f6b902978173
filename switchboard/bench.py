"""`switchboard bench`: end-to-end throughput and latency, side by side with pgbench on the same Postgres.

What one run does (every load bounded in time; loopback only):

1. Starts the four services as real subprocesses (`python -m switchboard run <service> --port P`) on
   free ports, with a database of their own (`switchboard_bench`, recreated) and a fresh topic prefix,
   or uses a running stack given by `--ingest-url/--assigner-url/--stats-url`.
2. Runs pgbench's simple-update script (`pgbench -N`) on a scratch database of the same server.
3. Closed-loop load through the public interfaces. Simulated users write user messages, through
   ingest's HTTP API or straight to `chat.inbound` with the same envelope; simulated operators pull
   (`POST /v1/assignments/next`), think, then reply through ingest (or Kafka), or release.
   Phase `max`: users as fast as the system takes them (held back only when the assigner's backlog
   passes a cap): the applied rate is the sustained throughput. Phase `half`: users paced at half
   that rate, where apply latency is judged.
4. Checks nothing was lost or doubled: every acknowledged message is stored once, per-chat counts
   match, and `reconcile` finds zero differences between stats and the assigner.
5. Scale check: 1 thousand, 100 thousand and 1 million waiting chats bulk-loaded with
   generate_series into `assigner.chats`, 200 operators pulling and releasing; pull p50/p99 per size.
6. Writes a JSON report and a PNG plot of throughput and latency over time; prints the targets.

Latency definitions (all wall clock of this one machine):
- apply latency: the frontend hands a user message over (HTTP request start, or Kafka send of an
  envelope whose occurred_at is that instant) -> `assigner.messages.recorded_at`, the instant the
  assigner decided it inside the transaction that commits it. Cross-checked with the assigner's
  `switchboard_event_apply_latency_seconds` histogram (occurred_at -> after commit).
- pull latency: client side, request written -> response read.
- stats lag: a lifecycle fact's occurred_at -> `stats.processed_events.applied_at` (its batch).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlunparse

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from services.assigner.repository import QUERIES as ASSIGNER_QUERIES
from shared.auth import issue_token
from shared.events import (
    TOPIC_INBOUND,
    OperatorMessage,
    OperatorMessagePayload,
    UserMessage,
    UserMessagePayload,
    encode,
)
from shared.settings import Settings
from switchboard.services import PROCESSES

console = Console(stderr=True)
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("ingest", "assigner", "idle_monitor", "stats")  # what a running stack (--*-url) offers
REPORT_VERSION = 1
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---- options ------------------------------------------------------------------------------------


@dataclass
class Options:
    """Every knob of the benchmark (each is a keyword of `main`)."""

    users: int = 200  # simulated users (each writes into its own chats)
    http_users: int = 16  # of them, how many write through ingest HTTP when direct_kafka is on
    operators: int = 40  # simulated operators in the load phases
    user_think_ms: float = 0.0  # pause between two messages of one user (0: as fast as acknowledged)
    operator_think_ms: float = 20.0  # pause between a pull and the reply/release (uniform 0.5x..1.5x)
    release_share: float = 0.1  # share of pulled chats released instead of answered
    messages_per_chat: int = 6  # a user opens a new chat after this many messages
    direct_kafka: bool = True  # users (all but http_users) produce straight to chat.inbound
    reply_via: str = "ingest"  # operators reply through "ingest" (HTTP) or "kafka"
    backlog_cap: int = 1500  # users wait while acked-but-not-applied inbound events exceed this
    warmup_s: float = 10.0  # load before the measured window of the max phase
    duration_s: float = 60.0  # measured window of the max phase
    half_duration_s: float = 30.0  # measured window at half the max throughput (0 skips the phase)
    drain_timeout_s: float = 90.0  # bound on waiting for the assigner to catch up after a phase
    pgbench: bool = True  # run pgbench -N on a scratch database of the same server
    pgbench_seconds: int = 15
    pgbench_clients: int = 8
    pgbench_threads: int = 2
    scale_check: bool | None = None  # default: on when the bench starts its own stack
    scale_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    scale_operators: int = 200
    scale_duration_s: float = 15.0  # measured pulls per size (after 2 s of warm-up)
    scale_think_ms: float = 1000.0  # pause between an operator's release and its next pull
    profile: bool = False  # py-spy record the services during the max phase
    database: str = "switchboard_bench"
    partitions: int = 6
    output: str = "artifacts/bench/bench.json"
    plot: str = "artifacts/bench/bench.png"
    ingest_url: str | None = None  # use a running stack instead of starting one
    assigner_url: str | None = None
    stats_url: str | None = None
    keep: bool = False  # keep the bench database and topics afterwards
    smoke: bool = False  # tiny numbers, a few seconds (CI)
    seed: int = 20250601


SMOKE = dict(
    users=6,
    http_users=2,
    operators=3,
    user_think_ms=20.0,
    operator_think_ms=5.0,
    warmup_s=1.0,
    duration_s=3.0,
    half_duration_s=2.0,
    drain_timeout_s=60.0,
    pgbench_seconds=2,
    pgbench_clients=2,
    pgbench_threads=1,
    scale_sizes=(100, 1_000),
    scale_operators=10,
    scale_duration_s=2.0,
    scale_think_ms=50.0,
    backlog_cap=500,
)


def make_options(**options) -> Options:
    """Options from keywords; `smoke=True` starts from the tiny preset, explicit keywords still win."""
    known = {f.name for f in fields(Options)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if options.get("smoke"):
        values.update(SMOKE)
    values.update({k: v for k, v in options.items() if v is not None})
    if "scale_sizes" in values and isinstance(values["scale_sizes"], str):
        values["scale_sizes"] = tuple(int(x) for x in values["scale_sizes"].split(",") if x.strip())
    opts = Options(**values)
    if opts.reply_via not in ("ingest", "kafka"):
        raise ValueError("reply_via must be 'ingest' or 'kafka'")
    if opts.users < 1 or opts.operators < 1:
        raise ValueError("users and operators must be at least 1")
    return opts


# ---- small helpers ------------------------------------------------------------------------------


def pct(values, q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return s[k]


def summary_ms(values_s) -> dict:
    """count, p50, p90, p99, max of durations in seconds, as milliseconds."""
    vals = list(values_s)
    out = {"count": len(vals)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        v = pct(vals, q)
        out[name] = None if v is None else round(v * 1000, 3)
    return out


def rnd(x, digits=1):
    return None if x is None else round(x, digits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_db(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


# ---- a minimal keep-alive HTTP/1.1 client (the load generator shares 2 cores with the system) ---


class HttpError(Exception):
    pass


class Conn:
    """One keep-alive connection; requests are sequential on it (one per simulated actor)."""

    def __init__(self, base: str):
        u = urlparse(base)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, token: str | None = None, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        """(status, body); reconnects once when a kept-alive connection was closed by the server."""
        for attempt in (1, 2):
            fresh = self.writer is None
            try:
                if fresh:
                    await self._open()
                return await asyncio.wait_for(self._exchange(method, path, token, body), timeout)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                await self.close()
                if fresh or attempt == 2:
                    raise HttpError(repr(exc)) from None
            except TimeoutError:
                await self.close()
                raise HttpError(f"timeout after {timeout}s") from None
        raise HttpError("unreachable")

    async def _exchange(self, method, path, token, body) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body) if body else 0}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif length is not None:
            data = await self.reader.readexactly(length) if length else b""
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, data


async def http_get(base: str, path: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = Conn(base)
    try:
        return await conn.request("GET", path, token, timeout=timeout)
    finally:
        await conn.close()


# ---- Prometheus text -----------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


def metric_sum(samples, name: str, **labels) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


def histogram(samples, name: str, **labels) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a histogram, summed over other labels."""
    buckets: dict[float, float] = defaultdict(float)
    for n, lab, v in samples:
        if n == f"{name}_bucket" and all(lab.get(k) == w for k, w in labels.items()):
            buckets[float(lab["le"])] += v
    return dict(buckets)


def histogram_quantile(q: float, after: dict[float, float], before: dict[float, float] | None = None) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of the difference of two bucket snapshots."""
    before = before or {}
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


# ---- processes: CPU and peak RSS from /proc ------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = stat.rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def proc_reaped_children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's children that exited and were waited for (cutime + cstime)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[13]) + int(parts[14])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_children(ppid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            kids.append(int(entry.name))
    return kids


def listener_pid(port: int) -> int | None:
    """The pid listening on a loopback TCP port (from /proc/net/tcp and the fd tables)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _cpu_line() -> list[int]:
    return [int(c) for c in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot, steal excluded."""
    vals = _cpu_line()
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:7]) - idle) / CLK_TCK


def machine_steal_s() -> float:
    """CPU seconds the hypervisor gave to other guests while this one wanted to run (since boot)."""
    vals = _cpu_line()
    return vals[7] / CLK_TCK if len(vals) > 7 else 0.0


class Watched:
    """The processes whose CPU and memory the report shows."""

    def __init__(self):
        self.pids: dict[str, int] = {}
        self.postgres_pid: int | None = None

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            v = proc_cpu_s(pid)
            if v is not None:
                out[name] = v
        if self.postgres_pid:
            # Sessions come and go: a backend that exited is counted in the postmaster's reaped
            # children time, so the total only grows (a bare sum over live pids can go down).
            total = proc_reaped_children_cpu_s(self.postgres_pid)
            for pid in [self.postgres_pid, *proc_children(self.postgres_pid)]:
                total += proc_cpu_s(pid) or 0.0
            out["postgres (all sessions)"] = total
        out["machine (all processes)"] = machine_cpu_s()
        out["machine steal (other VMs)"] = machine_steal_s()
        return out

    def peak_rss_mb(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            kb = proc_status_kb(pid, "VmHWM")
            if kb is not None:
                out[name] = round(kb / 1024, 1)
        return out


def cpu_delta(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Average cores used per process over a window."""
    return {k: round((after[k] - before[k]) / seconds, 3) for k in after if k in before and seconds > 0}


# ---- pgbench -------------------------------------------------------------------------------------


def pgbench_binary() -> str:
    """pgbench, installed from Debian's packages when missing (the client, else contrib/server)."""

    def usable() -> str | None:
        candidates = [str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)]
        candidates.append(shutil.which("pgbench") or "")
        for c in candidates:
            if not c:
                continue
            try:
                if subprocess.run([c, "--version"], capture_output=True, timeout=10).returncode == 0:
                    return c
            except (OSError, subprocess.TimeoutExpired):
                continue
        return None

    found = usable()
    if found:
        return found
    console.print("pgbench missing: installing it from Debian's packages ...")
    for package in ("postgresql-client", "postgresql-contrib"):
        result = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=APT_ENV, capture_output=True)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=APT_ENV, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], env=APT_ENV, capture_output=True)
        found = usable()
        if found:
            return found
    raise RuntimeError("pgbench is not installed and apt-get could not install it")


def _pg_args(url: str) -> tuple[list[str], dict]:
    u = urlparse(url)
    args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", unquote(u.username or "postgres")]
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = unquote(u.password)
    return args, env


async def run_pgbench(base_url: str, name: str, opts: Options) -> dict:
    """`pgbench -i` then `pgbench -N -c C -j J -T S` on a scratch database; its TPS."""
    binary = await asyncio.to_thread(pgbench_binary)
    await recreate_database(base_url, name)
    args, env = _pg_args(base_url)
    try:
        init = await asyncio.to_thread(
            subprocess.run,
            [binary, "-i", "-q", "-s", "1", *args, name],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {init.stderr[-1000:]}")
        cmd = [
            binary,
            "-N",
            "-n",
            "-c",
            str(opts.pgbench_clients),
            "-j",
            str(opts.pgbench_threads),
            "-T",
            str(opts.pgbench_seconds),
            *args,
            name,
        ]
        done = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, env=env, timeout=opts.pgbench_seconds + 120
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr[-1000:]}")
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout) or re.search(
            r"tps = ([0-9.]+)", done.stdout
        )
        lat = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
        return {
            "tps": float(m.group(1)) if m else None,
            "latency_avg_ms": float(lat.group(1)) if lat else None,
            "script": "simple-update (-N)",
            "clients": opts.pgbench_clients,
            "threads": opts.pgbench_threads,
            "seconds": opts.pgbench_seconds,
            "scale": 1,
            "database": name,
            "command": " ".join(cmd[:8] + ["..."] + [name]),
            "binary": binary,
        }
    finally:
        await drop_database(base_url, name)


async def recreate_database(base_url: str, name: str) -> None:
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def drop_database(base_url: str, name: str) -> None:
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# ---- the stack -------------------------------------------------------------------------------------


class Stack:
    """The four services: started here as subprocesses (stopped by pid at the end) or already running."""

    def __init__(self, settings: Settings, opts: Options, run_id: str):
        self.opts = opts
        self.run_id = run_id
        self.external = bool(opts.assigner_url or opts.ingest_url)
        self.watched = Watched()
        self.pid_files: dict[str, Path] = {}
        self.dir = Path(os.environ.get("SWITCHBOARD_LOCAL_DIR", REPO / ".local")) / "bench" / run_id
        if self.external:
            if not (opts.assigner_url and opts.ingest_url and opts.stats_url):
                raise ValueError("a running stack needs --ingest-url, --assigner-url and --stats-url")
            self.settings = settings
            self.urls = {
                "ingest": opts.ingest_url.rstrip("/"),
                "assigner": opts.assigner_url.rstrip("/"),
                "stats": opts.stats_url.rstrip("/"),
            }
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
        from deploy.local import process

        if not self.external:
            await recreate_database(self.settings.database_url, self.opts.database)
            self.dir.mkdir(parents=True, exist_ok=True)
            env = self.env()
            for name, (_, overrides) in PROCESSES.items():
                pid_file = self.dir / f"{name}.pid"
                self.pid_files[name] = pid_file
                pid = process.spawn(
                    [sys.executable, "-m", "switchboard", "run", name, "--port", str(self.ports[name])],
                    pid_file=pid_file,
                    log_file=self.dir / f"{name}.log",
                    env={**env, **overrides},
                    cwd=REPO,
                )
                self.watched.pids[name] = pid
        await self.wait_ready(120)
        if self.external:
            for name in SERVICES:
                url = self.urls.get(name)
                if url:
                    pid = await asyncio.to_thread(listener_pid, urlparse(url).port or 80)
                    if pid:
                        self.watched.pids[name] = pid
        kafka_port = int(self.settings.kafka_bootstrap_servers.rsplit(":", 1)[1])
        kafka_pid = await asyncio.to_thread(listener_pid, kafka_port)
        if kafka_pid:
            self.watched.pids["kafka broker"] = kafka_pid
        pg_pid = await asyncio.to_thread(listener_pid, urlparse(self.database_url).port or 5432)
        self.watched.postgres_pid = pg_pid
        self.watched.pids["bench client"] = os.getpid()

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.urls)
        while pending:
            for name in list(pending):
                try:
                    status, _ = await http_get(self.urls[name], "/readyz", timeout=3)
                    if status == 200:
                        pending.discard(name)
                except HttpError:
                    pass
                if not self.external:
                    from deploy.local import process

                    if process.read_pid(self.pid_files[name]) is None:
                        log = (self.dir / f"{name}.log").read_text()[-3000:]
                        raise RuntimeError(f"{name} exited during start-up:\n{log}")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not ready after {timeout_s:.0f}s: {', '.join(sorted(pending))} (logs in {self.dir})"
                )
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        from deploy.local import process

        if self.external:
            return
        await asyncio.gather(*(asyncio.to_thread(process.stop, pf, timeout_s=30) for pf in self.pid_files.values()))
        if not self.opts.keep:
            await delete_topics(self.settings)
            await drop_database(self.settings.database_url, self.opts.database)


async def delete_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    if not settings.topic_prefix.startswith("bench"):
        return  # only ever the bench's own topics
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:
        console.print(f"[yellow]could not delete bench topics: {exc!r}[/yellow]")
    finally:
        await admin.close()


# ---- the load ------------------------------------------------------------------------------------


class Recorder:
    """Everything the load generator observed, per wall-clock second and per message."""

    def __init__(self):
        self.sent_at: dict[str, float] = {}  # user message_id -> frontend hand-over time
        self.path_of: dict[str, str] = {}  # user message_id -> "http" | "kafka"
        self.user_acked: set[str] = set()
        self.user_unconfirmed: set[str] = set()
        self.op_acked: set[str] = set()
        self.op_unconfirmed: set[str] = set()
        self.user_acks_by_s: dict[int, int] = defaultdict(int)
        self.replies_by_s: dict[int, int] = defaultdict(int)
        self.pulls: list[tuple[float, float, str]] = []  # (wall time, seconds, result)
        self.releases: list[tuple[float, float]] = []
        self.replies: list[tuple[float, float]] = []  # operator reply accept latency
        self.accepts: dict[str, list[tuple[float, float]]] = {"http": [], "kafka": []}
        self.errors: dict[str, int] = defaultdict(int)
        self.inbound_acked = 0

    def window(self, items, start: float, end: float):
        return [x for x in items if start <= x[0] < end]


class Load:
    """Simulated users and operators against the stack, plus the monitor that gates and shows them."""

    def __init__(self, stack: Stack, opts: Options, run_id: str, rec: Recorder, progress: Progress | None):
        self.stack = stack
        self.opts = opts
        self.run_id = run_id
        self.rec = rec
        self.progress = progress
        self.rng = random.Random(opts.seed)
        s = stack.settings
        self.frontend_token = issue_token(s.auth_secret, "bench-frontend", "frontend")
        self.inbound_topic = s.topic(TOPIC_INBOUND)
        self.group = s.group("assigner")
        self.producer = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = False
        self.rate: float | None = None
        self._next_slot = 0.0
        self.applied_inbound = 0.0
        self.backlog = 0
        self.samples_log: list[dict] = []
        self.metrics_before: dict[str, Any] = {}
        self.cpu_samples: list[tuple[float, dict]] = []
        self.user_seq: dict[int, int] = defaultdict(int)
        self.tasks: list[asyncio.Task] = []
        self.status = ""

    async def __aenter__(self):
        if self.opts.direct_kafka or self.opts.reply_via == "kafka":
            from shared.kafka import make_producer

            self.producer = make_producer(self.stack.settings, client_id="switchboard-bench", linger_ms=5)
            await self.producer.start()
        return self

    async def __aexit__(self, *exc):
        if self.producer is not None:
            await self.producer.stop()

    # -- pacing ---------------------------------------------------------------------------------

    async def _pace(self) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
        if self.rate:
            now = time.monotonic()
            self._next_slot = max(self._next_slot + 1.0 / self.rate, now - 0.05)
            if self._next_slot > now:
                await asyncio.sleep(self._next_slot - now)

    # -- users ----------------------------------------------------------------------------------

    async def user(self, i: int, path: str) -> None:
        conn = Conn(self.stack.urls["ingest"]) if path == "http" else None
        think = self.opts.user_think_ms / 1000
        try:
            while self.running:
                await self._pace()
                if not self.running:
                    break
                n = self.user_seq[i]
                self.user_seq[i] += 1
                chat_id = f"b{self.run_id}-u{i}-c{n // self.opts.messages_per_chat}"
                message_id = f"b{self.run_id}-u{i}-m{n}"
                await self._send_user(conn, path, chat_id, message_id)
                if think:
                    await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
                else:
                    await asyncio.sleep(0)
        finally:
            if conn:
                await conn.close()

    async def _send_user(self, conn: Conn | None, path: str, chat_id: str, message_id: str) -> None:
        rec = self.rec
        started = time.time()
        rec.sent_at[message_id] = started
        rec.path_of[message_id] = path
        ok = False
        if path == "http":
            body = json.dumps({"message_id": message_id, "sender": "user", "text": "hello, I need help"}).encode()
            ok = await self._post_ingest(conn, chat_id, body)
        else:
            occurred = datetime.fromtimestamp(started, UTC)
            event = UserMessage(
                event_id=uuid.uuid4(),
                chat_id=chat_id,
                occurred_at=occurred,
                producer="bench",
                payload=UserMessagePayload(message_id=message_id, text="hello, I need help"),
            )
            ok = await self._produce(chat_id, encode(event))
        done = time.time()
        if ok:
            rec.user_acked.add(message_id)
            rec.user_acks_by_s[int(done)] += 1
            rec.accepts[path].append((started, done - started))
            rec.inbound_acked += 1
        else:
            rec.user_unconfirmed.add(message_id)

    async def _post_ingest(self, conn: Conn, chat_id: str, body: bytes) -> bool:
        for attempt in range(4):
            try:
                status, data = await conn.request(
                    "POST", f"/v1/chats/{quote(chat_id)}/messages", self.frontend_token, body
                )
            except HttpError:
                self.rec.errors["ingest_connection"] += 1
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            if status == 202:
                return True
            self.rec.errors[f"ingest_{status}"] += 1
            if status != 503:
                return False
            await asyncio.sleep(0.1 * (attempt + 1))  # same message_id: retry is safe
        return False

    async def _produce(self, chat_id: str, value: bytes) -> bool:
        try:
            fut = await self.producer.send(self.inbound_topic, value=value, key=chat_id.encode())
            await fut
            return True
        except Exception as exc:
            self.rec.errors[f"kafka_{type(exc).__name__}"] += 1
            return False

    # -- operators ------------------------------------------------------------------------------

    async def operator(self, j: int, prefix: str = "bench-op", scale: bool = False) -> None:
        me = f"{prefix}-{j}"
        token = issue_token(self.stack.settings.auth_secret, me, "operator")
        conn = Conn(self.stack.urls["assigner"])
        ingest = Conn(self.stack.urls["ingest"]) if self.opts.reply_via == "ingest" else None
        handled: set[str] = set()
        think = (self.opts.scale_think_ms if scale else self.opts.operator_think_ms) / 1000
        wait = 0.05  # back-off while nothing is waiting or our reply is not applied yet (no busy polling)
        try:
            while self.running:
                t0 = time.time()
                try:
                    status, data = await conn.request("POST", "/v1/assignments/next", token)
                except HttpError:
                    self.rec.errors["pull_connection"] += 1
                    await asyncio.sleep(0.2)
                    continue
                dt = time.time() - t0
                if status == 204:
                    self.rec.pulls.append((t0, dt, "empty"))
                    await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
                    wait = min(wait * 2, 0.8)
                    continue
                if status != 200:
                    self.rec.errors[f"pull_{status}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                body = json.loads(data)
                aid, chat_id = body["assignment_id"], body["chat"]["chat_id"]
                if aid in handled:
                    # Our reply is accepted but not applied yet: the assigner still shows the assignment.
                    self.rec.pulls.append((t0, dt, "current"))
                    await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
                    wait = min(wait * 2, 0.8)
                    continue
                wait = 0.05
                self.rec.pulls.append((t0, dt, "assigned"))
                handled.add(aid)
                if len(handled) > 64:
                    handled = {aid}
                if think:
                    await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
                if scale or self.rng.random() < self.opts.release_share:
                    t1 = time.time()
                    try:
                        status, _ = await conn.request("POST", f"/v1/assignments/{aid}/release", token)
                    except HttpError:
                        self.rec.errors["release_connection"] += 1
                        continue
                    self.rec.releases.append((t1, time.time() - t1))
                    if status != 200:
                        self.rec.errors[f"release_{status}"] += 1
                else:
                    await self._reply(ingest, me, chat_id)
        finally:
            await conn.close()
            if ingest:
                await ingest.close()

    async def _reply(self, ingest: Conn | None, me: str, chat_id: str) -> None:
        message_id = f"b{self.run_id}-{me}-r{uuid.uuid4().hex[:10]}"
        t1 = time.time()
        if ingest is not None:
            body = json.dumps(
                {
                    "message_id": message_id,
                    "sender": "operator",
                    "operator_id": me,
                    "text": "Thanks, let me look into that.",
                }
            ).encode()
            ok = await self._post_ingest(ingest, chat_id, body)
        else:
            event = OperatorMessage(
                event_id=uuid.uuid4(),
                chat_id=chat_id,
                occurred_at=datetime.fromtimestamp(t1, UTC),
                producer="bench",
                payload=OperatorMessagePayload(
                    message_id=message_id, operator_id=me, text="Thanks, let me look into that."
                ),
            )
            ok = await self._produce(chat_id, encode(event))
        done = time.time()
        if ok:
            self.rec.op_acked.add(message_id)
            self.rec.replies.append((t1, done - t1))
            self.rec.replies_by_s[int(done)] += 1
            self.rec.inbound_acked += 1
        else:
            self.rec.op_unconfirmed.add(message_id)

    # -- monitor --------------------------------------------------------------------------------

    async def scrape(self) -> list | None:
        """The assigner's metrics: its API process and, when it runs apart, its worker's."""
        samples = []
        for name in ("assigner", "assigner_worker"):
            if name not in self.stack.urls:
                continue
            try:
                status, data = await http_get(self.stack.urls[name], "/metrics", timeout=5)
            except HttpError:
                return None
            if status != 200:
                return None
            samples += parse_metrics(data.decode())
        return samples

    async def monitor(self) -> None:
        while True:
            samples = await self.scrape()
            if samples is not None:
                self.applied_inbound = metric_sum(
                    samples,
                    "switchboard_consumer_events_total",
                    group=self.group,
                    topic=TOPIC_INBOUND,
                    result="applied",
                )
                self.backlog = max(0, int(self.rec.inbound_acked - self.applied_inbound))
                if self.backlog > self.opts.backlog_cap:
                    self.gate.clear()
                else:
                    self.gate.set()
            self.cpu_samples.append((time.time(), self.stack.watched.cpu()))
            await asyncio.sleep(0.5)

    def live_line(self) -> str:
        now = time.time()
        acks = sum(self.rec.user_acks_by_s.get(int(now) - k, 0) for k in range(1, 4)) / 3
        turns = sum(self.rec.replies_by_s.get(int(now) - k, 0) for k in range(1, 4)) / 3
        recent = [p[1] for p in self.rec.pulls[-400:] if p[0] > now - 3]
        p99 = pct(recent, 0.99)
        return (
            f"user msgs/s {acks:,.0f} │ turns/s {turns:,.0f} │ pull p99 "
            f"{'-' if p99 is None else f'{p99 * 1000:.0f} ms'} │ backlog {self.backlog:,}"
        )

    # -- phases ---------------------------------------------------------------------------------

    async def run_phase(self, label: str, seconds: float, rate: float | None, task_id=None, on_tick=None) -> None:
        """Run users and operators for `seconds`; the caller owns the progress task."""
        self.rate = rate
        self._next_slot = time.monotonic()
        self.running = True
        self.gate.set()
        n_http = self.opts.users if not self.opts.direct_kafka else min(self.opts.http_users, self.opts.users)
        actors = [asyncio.create_task(self.user(i, "http" if i < n_http else "kafka")) for i in range(self.opts.users)]
        actors += [asyncio.create_task(self.operator(j)) for j in range(self.opts.operators)]
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                if self.progress is not None and task_id is not None:
                    self.progress.update(
                        task_id, completed=min(elapsed, seconds), description=f"{label:<10} {self.live_line()}"
                    )
                if on_tick:
                    on_tick(elapsed)
                await asyncio.sleep(0.25)
        finally:
            self.running = False
            self.gate.set()
            await asyncio.gather(*actors, return_exceptions=True)
            if self.progress is not None and task_id is not None:
                self.progress.update(task_id, completed=seconds)


# ---- analysis from the database ------------------------------------------------------------------


async def wait_drained(pool: asyncpg.Pool, rec: Recorder, run_id: str, timeout_s: float) -> dict:
    """Wait until every acknowledged user and operator message of this run is stored by the assigner (bounded)."""
    started = time.monotonic()
    expected = len(rec.user_acked) + len(rec.op_acked)
    stored = 0
    while time.monotonic() - started < timeout_s:
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM assigner.messages WHERE message_id LIKE $1", f"b{run_id}-%"
            )
        if stored >= expected:
            break
        await asyncio.sleep(0.5)
    return {
        "expected": expected,
        "stored": stored,
        "seconds": round(time.monotonic() - started, 1),
        "complete": stored >= expected,
    }


async def load_messages(pool: asyncpg.Pool, run_id: str) -> tuple[dict[str, float], set[str], dict]:
    """(user message_id -> recorded_at epoch, operator message ids, per-second counts) of this run."""
    like = f"b{run_id}-%"
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT message_id, sender, extract(epoch FROM recorded_at)::float8 AS t "
            "FROM assigner.messages WHERE message_id LIKE $1",
            like,
        )
        answered = await conn.fetch(
            "SELECT floor(extract(epoch FROM ended_at))::bigint AS s, count(*) AS n FROM assigner.assignments "
            "WHERE outcome = 'answered' GROUP BY 1"
        )
    users, ops = {}, set()
    per_s: dict[str, dict[int, int]] = {
        "user": defaultdict(int),
        "operator": defaultdict(int),
        "answered": defaultdict(int),
    }
    for r in rows:
        if r["sender"] == "user":
            users[r["message_id"]] = r["t"]
        else:
            ops.add(r["message_id"])
        per_s[r["sender"]][int(r["t"])] += 1
    for r in answered:
        per_s["answered"][int(r["s"])] += r["n"]
    return users, ops, per_s


async def integrity(pool: asyncpg.Pool, rec: Recorder, users: dict[str, float], ops: set[str]) -> dict:
    stored_users = set(users)
    lost_users = rec.user_acked - stored_users
    unexpected_users = stored_users - rec.user_acked - rec.user_unconfirmed
    lost_ops = rec.op_acked - ops
    unexpected_ops = ops - rec.op_acked - rec.op_unconfirmed
    async with pool.acquire() as conn:
        mismatched = await conn.fetchval(
            "SELECT count(*) FROM assigner.chats c LEFT JOIN (SELECT chat_id, count(*) AS n FROM assigner.messages "
            "GROUP BY 1) m USING (chat_id) WHERE c.message_count <> coalesce(m.n, 0)"
        )
        two_active = await conn.fetchval(
            "SELECT count(*) FROM (SELECT chat_id FROM assigner.assignments WHERE ended_at IS NULL "
            "GROUP BY 1 HAVING count(*) > 1) x"
        )
    return {
        "user_messages_acked": len(rec.user_acked),
        "user_messages_stored": len(stored_users),
        "user_messages_lost": len(lost_users),
        "user_messages_unexpected": len(unexpected_users),
        "user_messages_unconfirmed": len(rec.user_unconfirmed),
        "operator_messages_acked": len(rec.op_acked),
        "operator_messages_stored": len(ops),
        "operator_messages_lost": len(lost_ops),
        "operator_messages_unexpected": len(unexpected_ops),
        "operator_messages_unconfirmed": len(rec.op_unconfirmed),
        "chats_with_message_count_mismatch": mismatched,
        "chats_with_two_active_assignments": two_active,
        "lost_examples": sorted(lost_users)[:5] + sorted(lost_ops)[:5],
    }


async def run_reconcile(settings: Settings, timeout_s: float = 60) -> dict:
    from switchboard.reconcile import reconcile

    report = await reconcile(settings, quiesce_timeout_s=timeout_s)
    return {
        "differences": len(report.differences),
        "compared": report.compared,
        "not_quiescent": report.not_quiescent,
        "examples": [d.describe("assigner", "stats") for d in report.differences[:5]],
    }


async def stats_lag(
    settings: Settings, pool: asyncpg.Pool, windows: dict[str, tuple[float, float]], cap: int = 300_000
) -> dict[str, dict]:
    """Per window: lifecycle fact occurred_at -> stats.processed_events.applied_at (records read by time)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from switchboard.reconcile import lifecycle_partitions

    if not windows:
        return {}
    start = min(w[0] for w in windows.values())
    end = max(w[1] for w in windows.values())
    parts = await lifecycle_partitions(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    occurred: dict[uuid.UUID, float] = {}
    await consumer.start()
    try:
        tps = [TopicPartition(p.topic, p.partition) for p in parts]
        if not tps:
            return {}
        consumer.assign(tps)
        offsets = await consumer.offsets_for_times({tp: int(start * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            found = offsets.get(tp)
            if found is not None and found.offset < ends[tp]:
                consumer.seek(tp, found.offset)
                pending.add(tp)
        deadline = time.monotonic() + 60
        while pending and len(occurred) < cap and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    if r.timestamp > (end + 5) * 1000:
                        pending.discard(tp)
                        break
                    try:
                        data = json.loads(r.value)
                        t = datetime.fromisoformat(data["occurred_at"].replace("Z", "+00:00")).timestamp()
                    except (ValueError, KeyError, TypeError):
                        continue
                    if start <= t < end:
                        occurred[uuid.UUID(data["event_id"])] = t
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    ids = list(occurred)
    lags: dict[str, list[float]] = {name: [] for name in windows}
    missing = 0
    async with pool.acquire() as conn:
        for i in range(0, len(ids), 50_000):
            chunk = ids[i : i + 50_000]
            rows = await conn.fetch(
                "SELECT event_id, extract(epoch FROM applied_at)::float8 AS t "
                "FROM stats.processed_events WHERE event_id = ANY($1::uuid[])",
                chunk,
            )
            found = {r["event_id"]: r["t"] for r in rows}
            missing += len(chunk) - len(found)
            for eid, applied in found.items():
                t = occurred[eid]
                for name, (a, b) in windows.items():
                    if a <= t < b:
                        lags[name].append(max(0.0, applied - t))
    out = {name: summary_ms(v) for name, v in lags.items()}
    for v in out.values():
        v["facts_not_applied"] = missing
    return out


# ---- scale check ---------------------------------------------------------------------------------

# The claim every batch of pulls runs (the assigner's own SQL), for 8 pullers.
CLAIM_EXPLAIN = "EXPLAIN (ANALYZE, FORMAT JSON) " + ASSIGNER_QUERIES.claim_waiting_chats
CLAIM_PULLERS = 8


async def load_waiting_chats(pool: asyncpg.Pool, first: int, last: int, on_progress=None) -> None:
    """Insert waiting chats scale-<n> for n in [first, last], waiting_since spread over the last day."""
    chunk = 100_000
    for a in range(first, last + 1, chunk):
        b = min(last, a + chunk - 1)
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, message_count, created_at, "
                "updated_at) SELECT 'scale-' || lpad(g::text, 8, '0'), 'waiting_assignment', ts, ts, 0, now(), now() "
                "FROM (SELECT g, now() - random() * interval '1 day' AS ts FROM generate_series($1::int, $2::int) g) s",
                a,
                b,
                timeout=600,
            )
        if on_progress:
            on_progress(b - first + 1)


async def claim_plan(pool: asyncpg.Pool) -> dict:
    """The plan and execution time of the pull's claim query (locks one row; nothing is written)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            raw = await conn.fetchval(CLAIM_EXPLAIN, CLAIM_PULLERS)
    plan = json.loads(raw)[0]
    nodes, stack = [], [plan["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(f"{node['Node Type']}{' using ' + node['Index Name'] if 'Index Name' in node else ''}")
        stack.extend(node.get("Plans", []))
    return {
        "nodes": nodes,
        "execution_ms": round(plan.get("Execution Time", 0.0), 3),
        "uses_queue_index": any("chats_queue_idx" in n for n in nodes),
    }


async def scale_check(load: Load, pool: asyncpg.Pool, opts: Options, progress: Progress | None) -> dict:
    sizes = sorted(opts.scale_sizes)
    results = []
    loaded = 0
    for size in sizes:
        task = (
            progress.add_task(f"scale      loading {size:,} waiting chats", total=max(1, size - loaded))
            if progress
            else None
        )
        load_started = time.monotonic()
        if size > loaded:
            await load_waiting_chats(
                pool, loaded + 1, size, (lambda n, t=task: progress.update(t, completed=n)) if progress else None
            )
        async with pool.acquire() as conn:
            await conn.execute("VACUUM (ANALYZE) assigner.chats", timeout=600)
            waiting = await conn.fetchval("SELECT count(*) FROM assigner.chats WHERE state = 'waiting_assignment'")
        load_s = time.monotonic() - load_started
        loaded = size
        plan = await claim_plan(pool)
        before = await load.scrape()
        load.rec.pulls.clear()
        load.rec.releases.clear()
        load.running = True
        actors = [
            asyncio.create_task(load.operator(j, prefix="scale-op", scale=True)) for j in range(opts.scale_operators)
        ]
        total = opts.scale_duration_s + 2.0
        if progress:
            progress.update(task, total=total, completed=0, description=f"scale      {size:,} waiting: pulling")
        t0 = time.time()
        cpu0 = load.stack.watched.cpu()
        spies = []
        if opts.profile and size == sizes[-1] and not load.stack.external:
            spies = start_profiles(
                load.stack,
                opts.scale_duration_s,
                Path(opts.output).parent / "profiles",
                names=("assigner",),
                suffix=f"-scale-{size}",
            )
        try:
            while (el := time.time() - t0) < total:
                if progress:
                    recent = [p[1] for p in load.rec.pulls[-400:] if p[0] > time.time() - 3 and p[2] == "assigned"]
                    p99 = pct(recent, 0.99)
                    progress.update(
                        task,
                        completed=el,
                        description=(
                            f"scale      {size:,} waiting │ pulls {len(load.rec.pulls):,} │ pull p99 "
                            f"{'-' if p99 is None else f'{p99 * 1000:.0f} ms'}"
                        ),
                    )
                await asyncio.sleep(0.25)
        finally:
            load.running = False
            await asyncio.gather(*actors, return_exceptions=True)
        cpu1 = load.stack.watched.cpu()
        elapsed = time.time() - t0
        after = await load.scrape()
        profile = {}
        for name, proc, raw in spies:
            try:
                await asyncio.to_thread(proc.wait, timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            profile[name] = summarize_profile(raw)
        measured = [p for p in load.rec.pulls if p[0] >= t0 + 2.0]
        assigned = [p[1] for p in measured if p[2] == "assigned"]
        server = {}
        if before is not None and after is not None:
            hb = histogram(before, "switchboard_pull_latency_seconds", result="assigned")
            ha = histogram(after, "switchboard_pull_latency_seconds", result="assigned")
            for name, q in (("p50", 0.5), ("p99", 0.99)):
                v = histogram_quantile(q, ha, hb)
                server[name] = None if v is None else round(v * 1000, 2)
        window = max(0.001, time.time() - (t0 + 2.0))
        results.append(
            {
                "waiting_chats": size,
                "waiting_chats_counted": waiting,
                "load_seconds": round(load_s, 1),
                "operators": opts.scale_operators,
                "pulls": len(measured),
                "pulls_per_s": round(len(measured) / window, 1),
                "pull_latency_ms": summary_ms(assigned),
                "empty_pulls": sum(1 for p in measured if p[2] == "empty"),
                "release_latency_ms": summary_ms([r[1] for r in load.rec.releases if r[0] >= t0 + 2.0]),
                "server_pull_latency_ms": server,
                "claim_plan": plan,
                "cpu_cores": cpu_delta(cpu0, cpu1, elapsed),
                **({"profile": profile} if profile else {}),
            }
        )
        if progress:
            progress.update(task, completed=total, description=f"scale      {size:,} waiting: done")
    small, large = results[0], results[-1]
    ratio = None
    if small["pull_latency_ms"]["p99"] and large["pull_latency_ms"]["p99"]:
        ratio = round(large["pull_latency_ms"]["p99"] / small["pull_latency_ms"]["p99"], 2)
    ratio50 = None
    if small["pull_latency_ms"]["p50"] and large["pull_latency_ms"]["p50"]:
        ratio50 = round(large["pull_latency_ms"]["p50"] / small["pull_latency_ms"]["p50"], 2)
    return {
        "operators": opts.scale_operators,
        "think_ms": opts.scale_think_ms,
        "sizes": results,
        "p99_ratio_largest_to_smallest": ratio,
        "p50_ratio_largest_to_smallest": ratio50,
    }


# ---- profiling -----------------------------------------------------------------------------------


def start_profiles(
    stack: Stack,
    seconds: float,
    out_dir: Path,
    names=("assigner", "assigner_worker", "ingest", "stats"),
    suffix: str = "",
) -> list[tuple[str, subprocess.Popen, Path]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        console.print("[yellow]py-spy not found (pip install py-spy): no profiles[/yellow]")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for name in names:
        pid = stack.watched.pids.get(name)
        if not pid:
            continue
        raw = out_dir / f"{name}{suffix}.collapsed.txt"
        proc = subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "-r",
                "50",
                "-d",
                str(int(seconds)),
                "-p",
                str(pid),
                "--format",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running.append((name, proc, raw))
    return running


LIBRARIES = (
    ("asyncpg", "asyncpg"),
    ("aiokafka", "aiokafka"),
    ("kafka", "aiokafka"),
    ("pydantic", "pydantic"),
    ("fastapi", "fastapi/starlette"),
    ("starlette", "fastapi/starlette"),
    ("anyio", "fastapi/starlette"),
    ("uvicorn", "uvicorn/h11"),
    ("h11", "uvicorn/h11"),
    ("httptools", "uvicorn/h11"),
    ("jwt", "pyjwt"),
    ("prometheus_client", "prometheus_client"),
    ("json", "json"),
    ("ssl", "ssl"),
    ("asyncio", "asyncio"),
    ("selectors", "asyncio"),
    ("threading", "threads (thread pool)"),
    ("services/", "project"),
    ("shared/", "project"),
)


def _library(frame: str) -> str:
    where = frame[frame.rfind("(") + 1 :]
    for needle, name in LIBRARIES:
        if where.startswith(needle) or f"/{needle}" in where:
            return name
    return "other"


def summarize_profile(raw: Path, top: int = 12) -> dict:
    """From py-spy's collapsed stacks: top self frames, top project frames (inclusive), time by library."""
    own: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    libs: dict[str, int] = defaultdict(int)
    total = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        libs[_library(frames[-1])] += count
        for f in set(frames):
            if "(services/" in f or "(shared/" in f:
                incl[f] += count
    if not total:
        return {}

    def fmt(d):
        return [{"frame": k, "share": round(v / total, 3)} for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "self": fmt(own),
        "project_inclusive": fmt(incl),
        "self_by_library": {k: round(v / total, 3) for k, v in sorted(libs.items(), key=lambda kv: -kv[1])},
        "file": str(raw),
    }


# ---- report --------------------------------------------------------------------------------------


def phase_report(
    name: str,
    window: tuple[float, float],
    rec: Recorder,
    users: dict[str, float],
    per_s: dict,
    cpu0: dict,
    cpu1: dict,
    hist: dict,
    extra: dict,
) -> dict:
    a, b = window
    secs = list(range(math.ceil(a), math.floor(b)))
    span = max(1, len(secs))
    user_applied = sum(per_s["user"].get(s, 0) for s in secs) / span
    op_applied = sum(per_s["operator"].get(s, 0) for s in secs) / span
    turns = sum(per_s["answered"].get(s, 0) for s in secs) / span
    acked = sum(rec.user_acks_by_s.get(s, 0) for s in secs) / span
    lat, by_path = [], {"http": [], "kafka": []}
    for mid, t_sent in rec.sent_at.items():
        if a <= t_sent < b and mid in users:
            d = max(0.0, users[mid] - t_sent)
            lat.append(d)
            by_path[rec.path_of[mid]].append(d)
    pulls = [p for p in rec.pulls if a <= p[0] < b]
    by_result = defaultdict(list)
    for p in pulls:
        by_result[p[2]].append(p[1])
    return {
        "window_s": round(b - a, 1),
        "user_events_per_s": round(user_applied, 1),
        "user_events_acked_per_s": round(acked, 1),
        "operator_events_per_s": round(op_applied, 1),
        "inbound_events_per_s": round(user_applied + op_applied, 1),
        "turns_per_s": round(turns, 1),
        "apply_latency_ms": {**summary_ms(lat), "by_path": {k: summary_ms(v) for k, v in by_path.items() if v}},
        "assigner_histogram_apply_ms": hist,
        "pull_latency_ms": {
            **summary_ms([p[1] for p in pulls]),
            "by_result": {k: summary_ms(v) for k, v in sorted(by_result.items())},
        },
        "pulls_per_s": round(len(pulls) / max(0.001, b - a), 1),
        "release_latency_ms": summary_ms([r[1] for r in rec.releases if a <= r[0] < b]),
        "reply_accept_latency_ms": summary_ms([r[1] for r in rec.replies if a <= r[0] < b]),
        "user_accept_latency_ms": {
            k: summary_ms([x[1] for x in v if a <= x[0] < b]) for k, v in rec.accepts.items() if v
        },
        "cpu_cores": cpu_delta(cpu0, cpu1, b - a),
        **extra,
    }


def timeline(
    rec: Recorder,
    users: dict[str, float],
    per_s: dict,
    t_start: float,
    t_end: float,
    phases: list[tuple[str, float, float]],
) -> list[dict]:
    apply_by_s: dict[int, list[float]] = defaultdict(list)
    for mid, t_sent in rec.sent_at.items():
        if mid in users:
            apply_by_s[int(t_sent)].append(max(0.0, users[mid] - t_sent))
    pulls_by_s: dict[int, list[float]] = defaultdict(list)
    for t, d, _ in rec.pulls:
        pulls_by_s[int(t)].append(d)
    out = []
    for s in range(int(t_start), int(t_end) + 1):
        phase = next((n for n, a, b in phases if a <= s + 0.5 < b), "")
        ap, pl = apply_by_s.get(s, []), pulls_by_s.get(s, [])
        out.append(
            {
                "t": round(s - t_start, 1),
                "epoch": s,
                "phase": phase,
                "user_acked": rec.user_acks_by_s.get(s, 0),
                "user_applied": per_s["user"].get(s, 0),
                "turns": per_s["answered"].get(s, 0),
                "apply_p50_ms": rnd(pct(ap, 0.5) and pct(ap, 0.5) * 1000, 2),
                "apply_p99_ms": rnd(pct(ap, 0.99) and pct(ap, 0.99) * 1000, 2),
                "pull_p50_ms": rnd(pct(pl, 0.5) and pct(pl, 0.5) * 1000, 2),
                "pull_p99_ms": rnd(pct(pl, 0.99) and pct(pl, 0.99) * 1000, 2),
            }
        )
    return out


def write_plot(report: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    tl = report["timeline"]
    if not tl:
        return None
    scale = report.get("scale_check") or {}
    rows = 3 if scale.get("sizes") else 2
    fig, axes = plt.subplots(rows, 1, figsize=(12, 3.6 * rows), constrained_layout=True)
    t = [p["t"] for p in tl]
    ax = axes[0]
    ax.plot(t, [p["user_acked"] for p in tl], label="user messages acknowledged /s", lw=1, alpha=0.7)
    ax.plot(t, [p["user_applied"] for p in tl], label="user messages applied by the assigner /s", lw=1.6)
    ax.plot(t, [p["turns"] for p in tl], label="conversation turns (answers applied) /s", lw=1.2)
    pg = (report.get("pgbench") or {}).get("tps")
    if pg:
        ax.axhline(pg, color="grey", ls="--", lw=1, label=f"pgbench simple-update TPS ({pg:,.0f})")
    ax.set_ylabel("events / s")
    ax.set_title("Switchboard bench: throughput")
    ax2 = axes[1]
    for key, label in (
        ("apply_p50_ms", "apply p50"),
        ("apply_p99_ms", "apply p99"),
        ("pull_p50_ms", "pull p50"),
        ("pull_p99_ms", "pull p99"),
    ):
        xs = [p["t"] for p in tl if p[key] is not None]
        ys = [max(p[key], 0.01) for p in tl if p[key] is not None]
        ax2.plot(xs, ys, label=label + " (ms)", lw=1.2, ls="-" if "apply" in key else ":")
    ax2.set_yscale("log")
    ax2.set_ylabel("milliseconds")
    ax2.set_xlabel("seconds since the load started")
    ax2.set_title("latency per second (by send/request time)")
    colors = {"warm-up": "#eeeeee", "max": "#ddeeff", "half": "#e6ffe6", "drain": "#fff3dd"}
    for name, a, b in report["phase_spans"]:
        for axis in (ax, ax2):
            axis.axvspan(a, b, color=colors.get(name, "#f5f5f5"), zorder=0)
        if b - a >= 4:
            ax.text((a + b) / 2, ax.get_ylim()[1] * 0.98, name, ha="center", va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    if rows == 3:
        ax3 = axes[2]
        sizes = [s["waiting_chats"] for s in scale["sizes"]]
        ax3.plot(sizes, [s["pull_latency_ms"]["p50"] for s in scale["sizes"]], "o-", label="pull p50 (client)")
        ax3.plot(sizes, [s["pull_latency_ms"]["p99"] for s in scale["sizes"]], "o-", label="pull p99 (client)")
        ax3.set_xscale("log")
        ax3.set_xlabel("waiting chats")
        ax3.set_ylabel("milliseconds")
        ax3.set_title(f"scale check: {scale['operators']} operators pulling and releasing")
        ax3.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def targets(report: dict) -> list[dict]:
    h = report["headline"]
    out = []

    def add(name, value, target, met, unit=""):
        out.append({"name": name, "value": value, "target": target, "met": met, "unit": unit})

    ratio = h.get("events_per_pgbench_tps")
    add(
        "user-message events/s >= pgbench TPS (aim 2x)",
        ratio,
        ">= 1.0 (2.0)",
        None if ratio is None else ratio >= 1.0,
        "x",
    )
    p99 = h.get("pull_p99_ms_200_operators")
    add(
        f"pull p99 with {report['options']['scale_operators']} operators",
        p99,
        "<= 10 ms",
        None if p99 is None else p99 <= 10,
        "ms",
    )
    r = (report.get("scale_check") or {}).get("p99_ratio_largest_to_smallest")
    add("pull p99 at largest / smallest queue", r, "<= 1.5", None if r is None else r <= 1.5, "x")
    a = h.get("apply_p99_ms_half")
    add("apply p99 at half max throughput", a, "<= 200 ms", None if a is None else a <= 200, "ms")
    ok = report["integrity"].get("ok")
    add("nothing lost or doubled; reconcile zero differences", ok, "true", ok)
    return out


def print_report(report: dict) -> None:
    h = report["headline"]
    t = Table(title="Switchboard bench", show_lines=False)
    t.add_column("figure")
    t.add_column("value", justify="right")

    def v(x, unit="", digits=1):
        return "-" if x is None else f"{x:,.{digits}f}{unit}"

    t.add_row("sustained user-message events/s (applied)", v(h["user_events_per_s"]))
    t.add_row("conversation turns/s", v(h["turns_per_s"]))
    t.add_row("pgbench simple-update TPS (same run)", v(h["pgbench_tps"]))
    t.add_row("events/s ÷ pgbench TPS", v(h["events_per_pgbench_tps"], "x", 2))
    t.add_row(
        "apply latency p50 / p99 (half load)",
        f"{v(h['apply_p50_ms_half'], ' ms')} / {v(h['apply_p99_ms_half'], ' ms')}",
    )
    t.add_row(
        "apply latency p50 / p99 (max load)", f"{v(h['apply_p50_ms_max'], ' ms')} / {v(h['apply_p99_ms_max'], ' ms')}"
    )
    t.add_row("pull latency p50 / p99 (load phases)", f"{v(h['pull_p50_ms'], ' ms')} / {v(h['pull_p99_ms'], ' ms')}")
    t.add_row("stats lag p99 (half load)", v(h["stats_lag_p99_ms"], " ms"))
    for s in (report.get("scale_check") or {}).get("sizes", []):
        lat = s["pull_latency_ms"]
        t.add_row(
            f"scale: pull p50 / p99 with {s['waiting_chats']:,} waiting",
            f"{v(lat['p50'], ' ms')} / {v(lat['p99'], ' ms')}  ({s['pulls_per_s']:,.0f} pulls/s)",
        )
    sc = report.get("scale_check") or {}
    if sc:
        t.add_row("scale: p99 ratio largest/smallest", v(sc.get("p99_ratio_largest_to_smallest"), "x", 2))
    for name, r in report["resources"]["processes"].items():
        t.add_row(
            f"cpu cores (max phase) / peak RSS: {name}",
            f"{v(r.get('cpu_cores_max'), '', 2)} / {v(r.get('peak_rss_mb'), ' MB')}",
        )
    integ = report["integrity"]
    t.add_row(
        "lost / unexpected user messages",
        f"{integ.get('user_messages_lost')} / {integ.get('user_messages_unexpected')}",
    )
    t.add_row(
        "reconcile differences (after load / at end)",
        f"{(integ.get('reconcile') or {}).get('differences')} / {(integ.get('reconcile_final') or {}).get('differences')}",
    )
    console.print(t)
    tt = Table(title="Targets (figures, not assertions)")
    for col in ("target", "value", "wanted", "met"):
        tt.add_column(col)
    for g in report["targets"]:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[g["met"]]
        tt.add_row(g["name"], "-" if g["value"] is None else f"{g['value']}{g['unit']}", g["target"], met)
    console.print(tt)
    for note in report["notes"]:
        console.print(f"[dim]note: {note}[/dim]")


# ---- the run ---------------------------------------------------------------------------------------


async def run(settings: Settings, opts: Options) -> dict:
    run_id = f"{time.strftime('%H%M%S')}{secrets.token_hex(2)}"
    stack = Stack(settings, opts, run_id)
    scale_on = opts.scale_check if opts.scale_check is not None else not stack.external
    rec = Recorder()
    load_avg = os.getloadavg()
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in load_avg],
            "python": sys.version.split()[0],
        },
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        "stack": {
            "mode": "external" if stack.external else "spawned",
            "urls": stack.urls,
            "topic_prefix": stack.settings.topic_prefix,
            "database": urlparse(stack.database_url).path.lstrip("/"),
        },
        "notes": [],
    }
    if load_avg[0] > (os.cpu_count() or 1) * 0.5:
        report["notes"].append(
            f"the machine was busy before the run (load average {load_avg[0]:.1f} on "
            f"{os.cpu_count()} cores): figures are pessimistic"
        )
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    pool = None
    try:
        with progress:
            t = progress.add_task(
                "starting   the four services" if not stack.external else "checking   the stack", total=None
            )
            await stack.start()
            progress.update(t, total=1, completed=1, description="ready      services up")
            loopback = urlparse(stack.database_url).hostname in ("127.0.0.1", "localhost", "::1")
            pool = await asyncpg.create_pool(
                stack.database_url,
                min_size=1,
                max_size=4,
                ssl=False if loopback else None,
                server_settings={"application_name": "switchboard-bench", "statement_timeout": "0"},
            )
            if opts.pgbench:
                t = progress.add_task(
                    f"pgbench    -N -c {opts.pgbench_clients} -j {opts.pgbench_threads} -T {opts.pgbench_seconds}",
                    total=None,
                )
                report["pgbench"] = await run_pgbench(stack.database_url, f"{opts.database}_pgbench", opts)
                progress.update(
                    t,
                    total=1,
                    completed=1,
                    description=f"pgbench    {report['pgbench']['tps']:,.0f} TPS (simple-update)",
                )
            else:
                report["pgbench"] = None
            phases: list[tuple[str, float, float]] = []
            windows: dict[str, tuple[float, float]] = {}
            cpu: dict[str, tuple[dict, dict]] = {}
            hists: dict[str, dict] = {}
            extras: dict[str, dict] = {"max": {}, "half": {}}
            async with Load(stack, opts, run_id, rec, progress) as load:
                monitor = asyncio.create_task(load.monitor())
                t_load = time.time()
                try:
                    # max phase: warm-up then measured window, in one continuous run
                    total = opts.warmup_s + opts.duration_s
                    task = progress.add_task("max", total=total)
                    marks: dict[str, Any] = {}
                    spies: list = []
                    t0 = time.time()
                    marks_task = asyncio.create_task(_mark_after(opts.warmup_s, load, marks))
                    if opts.profile and not stack.external:
                        # py-spy samples the measured window only (it starts when the warm-up ends)
                        marks_task.add_done_callback(
                            lambda _: spies.extend(
                                start_profiles(
                                    stack, max(1, opts.duration_s - 1), Path(opts.output).parent / "profiles"
                                )
                            )
                        )
                    await load.run_phase("max", total, None, task)
                    await marks_task
                    t1 = time.time()
                    start_max = marks.get("start", t0 + opts.warmup_s)
                    samples_before = marks.get("samples")
                    samples_after = await load.scrape()
                    cpu["max"] = (marks.get("cpu") or stack.watched.cpu(), stack.watched.cpu())
                    hists["max"] = _hist_summary(samples_before, samples_after, stack.settings.group("assigner"))
                    extras["max"]["backlog_at_end"] = load.backlog
                    phases += [("warm-up", t0, start_max), ("max", start_max, t1)]
                    windows["max"] = (start_max, t1)
                    for _name, proc, _raw in spies:
                        try:
                            await asyncio.to_thread(proc.wait, timeout=30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                    if spies:
                        report["profiles"] = {name: summarize_profile(raw) for name, _, raw in spies}
                    d0 = time.time()
                    task = progress.add_task("drain      waiting for the assigner to catch up", total=None)
                    drained = await wait_drained(pool, rec, run_id, opts.drain_timeout_s)
                    progress.update(
                        task,
                        total=1,
                        completed=1,
                        description=f"drain      {drained['stored']:,}/{drained['expected']:,} stored "
                        f"in {drained['seconds']} s",
                    )
                    extras["max"]["drain"] = drained
                    phases.append(("drain", d0, time.time()))
                    # half phase: paced at half of the applied rate just measured
                    if opts.half_duration_s > 0:
                        users_now, _, per_s_now = await load_messages(pool, run_id)
                        secs = range(math.ceil(start_max), math.floor(t1))
                        max_rate = sum(per_s_now["user"].get(s, 0) for s in secs) / max(1, len(secs))
                        rate = max(1.0, max_rate / 2)
                        extras["half"]["target_rate"] = round(rate, 1)
                        task = progress.add_task("half", total=opts.half_duration_s + 2)
                        h0 = time.time()
                        hmarks: dict[str, Any] = {}
                        hm = asyncio.create_task(_mark_after(2.0, load, hmarks))
                        await load.run_phase(f"half@{rate:,.0f}/s", opts.half_duration_s + 2, rate, task)
                        await hm
                        h1 = time.time()
                        hstart = hmarks.get("start", h0 + 2)
                        cpu["half"] = (hmarks.get("cpu") or stack.watched.cpu(), stack.watched.cpu())
                        hists["half"] = _hist_summary(
                            hmarks.get("samples"), await load.scrape(), stack.settings.group("assigner")
                        )
                        extras["half"]["backlog_at_end"] = load.backlog
                        phases += [("warm-up", h0, hstart), ("half", hstart, h1)]
                        windows["half"] = (hstart, h1)
                        d1 = time.time()
                        task = progress.add_task("drain", total=None)
                        drained = await wait_drained(pool, rec, run_id, opts.drain_timeout_s)
                        extras["half"]["drain"] = drained
                        progress.update(
                            task,
                            total=1,
                            completed=1,
                            description=f"drain      {drained['stored']:,}/{drained['expected']:,} stored "
                            f"in {drained['seconds']} s",
                        )
                        phases.append(("drain", d1, time.time()))
                    t_end = time.time()
                    # integrity and reconcile
                    task = progress.add_task("check      lost / doubled, reconcile", total=None)
                    users, ops, per_s = await load_messages(pool, run_id)
                    integ = await integrity(pool, rec, users, ops)
                    integ["reconcile"] = await run_reconcile(stack.settings)
                    lag = await stats_lag(stack.settings, pool, windows)
                    progress.update(
                        task,
                        total=1,
                        completed=1,
                        description=f"check      lost {integ['user_messages_lost'] + integ['operator_messages_lost']}, "
                        f"reconcile differences {integ['reconcile']['differences']}",
                    )
                    report["phases"] = {}
                    for name, window in windows.items():
                        c0, c1 = cpu[name]
                        report["phases"][name] = phase_report(
                            name,
                            window,
                            rec,
                            users,
                            per_s,
                            c0,
                            c1,
                            hists[name],
                            {**extras.get(name, {}), "stats_lag_ms": lag.get(name)},
                        )
                    report["timeline"] = timeline(rec, users, per_s, t_load, t_end, phases)
                    report["phase_spans"] = [(n, round(a - t_load, 2), round(b - t_load, 2)) for n, a, b in phases]
                    load_pulls = list(rec.pulls)
                    # scale check
                    if scale_on:
                        report["scale_check"] = await scale_check(load, pool, opts, progress)
                        task = progress.add_task("check      final reconcile", total=None)
                        integ["reconcile_final"] = await run_reconcile(stack.settings)
                        progress.update(
                            task,
                            total=1,
                            completed=1,
                            description=f"check      final reconcile differences "
                            f"{integ['reconcile_final']['differences']}",
                        )
                    else:
                        report["scale_check"] = None
                        integ["reconcile_final"] = integ["reconcile"]
                    report["integrity"] = integ
                finally:
                    monitor.cancel()
                    try:
                        await monitor
                    except (asyncio.CancelledError, Exception):
                        pass
            cpu_total = stack.watched.cpu()
            rss = stack.watched.peak_rss_mb()
            max_cores = report["phases"]["max"]["cpu_cores"]
            report["resources"] = {
                "processes": {
                    name: {
                        "cpu_cores_max": max_cores.get(name),
                        "cpu_cores_half": (report["phases"].get("half") or {}).get("cpu_cores", {}).get(name),
                        "cpu_seconds_total": rnd(cpu_total.get(name), 1),
                        "peak_rss_mb": rss.get(name),
                    }
                    for name in list(stack.watched.pids) + ["postgres (all sessions)"]
                },
                "machine_busy_cores_max": max_cores.get("machine (all processes)"),
                "note": "cpu_cores = average cores used in the phase window; peak RSS = VmHWM; postgres and the "
                "Kafka broker are shared with anything else running on this machine",
            }
            _headline(report, load_pulls)
            integ = report["integrity"]
            integ["ok"] = (
                integ["user_messages_lost"] == 0
                and integ["operator_messages_lost"] == 0
                and integ["chats_with_message_count_mismatch"] == 0
                and integ["chats_with_two_active_assignments"] == 0
                and integ["reconcile"]["differences"] == 0
                and integ["reconcile_final"]["differences"] == 0
            )
            report["targets"] = targets(report)
            report["finished_at"] = datetime.now(UTC).isoformat()
    finally:
        if pool is not None:
            await pool.close()
        await stack.stop()
    return report


async def _mark_after(delay: float, load: Load, marks: dict) -> None:
    """Snapshot CPU and the assigner's metrics when the warm-up ends."""
    await asyncio.sleep(delay)
    marks.setdefault("start", time.time())
    marks.setdefault("cpu", load.stack.watched.cpu())
    marks["samples"] = await load.scrape()


def _hist_summary(before, after, group: str) -> dict:
    if not after:
        return {}
    hb = histogram(before or [], "switchboard_event_apply_latency_seconds", group=group)
    ha = histogram(after, "switchboard_event_apply_latency_seconds", group=group)
    bb = histogram(before or [], "switchboard_consumer_batch_duration_seconds", group=group)
    ba = histogram(after, "switchboard_consumer_batch_duration_seconds", group=group)
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        v = histogram_quantile(q, ha, hb)
        out[name] = None if v is None else round(v * 1000, 1)
        v = histogram_quantile(q, ba, bb)
        out[f"batch_{name}"] = None if v is None else round(v * 1000, 1)  # one partition batch's apply time
    out["batches"] = int(ba.get(float("inf"), 0) - bb.get(float("inf"), 0))
    return out


def _headline(report: dict, load_pulls) -> None:
    ph = report["phases"]
    mx, half = ph["max"], ph.get("half") or {}
    pg = (report.get("pgbench") or {}).get("tps")
    sizes = (report.get("scale_check") or {}).get("sizes") or []
    pulls = [p[1] for p in load_pulls]
    report["headline"] = {
        "user_events_per_s": mx["user_events_per_s"],
        "turns_per_s": mx["turns_per_s"],
        "pgbench_tps": pg,
        "events_per_pgbench_tps": round(mx["user_events_per_s"] / pg, 2) if pg else None,
        "apply_p50_ms_half": (half.get("apply_latency_ms") or {}).get("p50"),
        "apply_p99_ms_half": (half.get("apply_latency_ms") or {}).get("p99"),
        "apply_p50_ms_max": mx["apply_latency_ms"]["p50"],
        "apply_p99_ms_max": mx["apply_latency_ms"]["p99"],
        "pull_p50_ms": rnd(pct(pulls, 0.5) and pct(pulls, 0.5) * 1000, 2),
        "pull_p99_ms": rnd(pct(pulls, 0.99) and pct(pulls, 0.99) * 1000, 2),
        "pull_p99_ms_200_operators": sizes[0]["pull_latency_ms"]["p99"] if sizes else None,
        "stats_lag_p50_ms": ((half or mx).get("stats_lag_ms") or {}).get("p50"),
        "stats_lag_p99_ms": ((half or mx).get("stats_lag_ms") or {}).get("p99"),
    }


def main(settings: Settings, **options) -> int:
    """Entry point of `switchboard bench`: run, print, write JSON (and PNG); 0 when nothing was lost."""
    opts = make_options(**options)
    started = time.monotonic()
    # The load generator shares the machine with what it measures: the same event loop the
    # services run on (uvloop, as uvicorn picks it) keeps its own CPU down.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        report = runner.run(run(settings, opts))
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(opts.output)
    if not out.is_absolute():
        out = Path.cwd() / out
    plot = Path(opts.plot)
    if not plot.is_absolute():
        plot = Path.cwd() / plot
    report["plot"] = write_plot(report, plot) if opts.plot else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    console.print(f"report: {out}" + (f"   plot: {report['plot']}" if report.get("plot") else ""))
    return 0 if report["integrity"]["ok"] else 1


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it; without it, the standard loop
        return None
    return uvloop.new_event_loop


def _on_sigterm(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":  # python -m switchboard.bench [--smoke]: handy before the CLI registers it
    import argparse

    from shared.settings import load_settings

    parser = argparse.ArgumentParser(description="Switchboard end-to-end benchmark")
    for f in fields(Options):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "scale_sizes":
            parser.add_argument(flag, default=None, help="comma-separated sizes")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None)
    args = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
    signal.signal(signal.SIGTERM, _on_sigterm)
    if "SWITCHBOARD_AUTH_SECRET" not in os.environ:
        os.environ["SWITCHBOARD_AUTH_SECRET"] = secrets.token_urlsafe(36)
    sys.exit(main(load_settings(), **args))
