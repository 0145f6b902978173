"""pgbench on scratch databases of the same server, in the same run as the system: its simple-update
script (the database's own limit) and the SQL reference peer's conversation turn (sql/peer/)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import asyncpg
from rich.console import Console

from switchboard.bench.options import Options
from switchboard.bench.stack import drop_database, recreate_database, with_db

console = Console(stderr=True)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


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
    """Connection flags and environment (password) for a libpq tool, from a database URL."""
    u = urlparse(url)
    args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", unquote(u.username or "postgres")]
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = unquote(u.password)
    return args, env


PEER_DIR = Path(__file__).parent / "sql" / "peer"  # the SQL reference peer, copied from the shared guides
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def parse_pgbench(stdout: str) -> dict:
    """TPS (without initial connection time, else the only one printed) and average latency of a run."""
    m = TPS.search(stdout) or re.search(r"tps = ([0-9.]+)", stdout)
    lat = re.search(r"latency average = ([0-9.]+) ms", stdout)
    return {"tps": float(m.group(1)) if m else None, "latency_avg_ms": float(lat.group(1)) if lat else None}


async def run_pgbench(base_url: str, name: str, opts: Options) -> dict:
    """`pgbench -i` then `pgbench -N -c C -j J -T S` on a scratch database; its TPS."""
    return await _run(base_url, name, opts, ["-N"], opts.pgbench_seconds, "simple-update (-N)")


PEER_ATTEMPTS = 3


async def run_sql_peer(base_url: str, name: str, opts: Options) -> dict:
    """The SQL reference peer (sql/peer/): its schema on a scratch database, then `pgbench -n -f
    turn.pgbench`; `turns_per_s` is pgbench's TPS (one turn = user message, pull, reply: 3 transactions)."""
    # The peer (copied unchanged) inserts a chat id drawn at random: two clients drawing the same new
    # id at once abort pgbench with a duplicate key (seen once in four runs). Such a run is discarded
    # and the peer run again on a fresh database, at most PEER_ATTEMPTS times; `attempts` says how many.
    for attempt in range(1, PEER_ATTEMPTS + 1):
        try:
            result = await _run(
                base_url,
                name,
                opts,
                ["-f", str(PEER_DIR / "turn.pgbench")],
                opts.sql_peer_seconds,
                "sql reference peer (turn.pgbench)",
                setup_sql=(PEER_DIR / "schema.sql").read_text(),
            )
        except RuntimeError as exc:
            if attempt == PEER_ATTEMPTS or "duplicate key" not in str(exc):
                raise
            continue
        return {"turns_per_s": result["tps"], "attempts": attempt, **result}
    raise AssertionError("unreachable")


async def _run(
    base_url: str,
    name: str,
    opts: Options,
    script: list[str],
    seconds: int,
    label: str,
    setup_sql: str | None = None,
) -> dict:
    """`pgbench -i -s 1`, then `setup_sql`, then the script with the bench's clients and threads, on a
    scratch database dropped afterwards."""
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
        if setup_sql:
            conn = await asyncpg.connect(with_db(base_url, name))
            try:
                await conn.execute(setup_sql)  # no arguments: the simple protocol runs the whole script
            finally:
                await conn.close()
        cmd = [
            binary,
            *script,
            "-n",
            "-c",
            str(opts.pgbench_clients),
            "-j",
            str(opts.pgbench_threads),
            "-T",
            str(seconds),
            *args,
            name,
        ]
        done = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, env=env, timeout=seconds + 120
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr[-1000:]}")
        shown = [Path(a).name if a.endswith(".pgbench") else a for a in cmd[1 : len(script) + 8]]
        return {
            **parse_pgbench(done.stdout),
            "script": label,
            "clients": opts.pgbench_clients,
            "threads": opts.pgbench_threads,
            "seconds": seconds,
            "scale": 1,
            "database": name,
            "command": " ".join(["pgbench", *shown, "...", name]),
            "binary": binary,
        }
    finally:
        await drop_database(base_url, name)
