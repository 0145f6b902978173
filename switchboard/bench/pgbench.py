"""pgbench's simple-update script on a scratch database of the same server: the database's own limit,
measured in the same run as the system."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

from rich.console import Console

from switchboard.bench.options import Options
from switchboard.bench.stack import drop_database, recreate_database

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
