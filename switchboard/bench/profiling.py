"""Profiles of the services under load (py-spy, sampling from outside the process): where their CPU
time goes, by frame and by library."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console

console = Console(stderr=True)


def start_profiles(
    pids: dict[str, int],
    seconds: float,
    out_dir: Path,
    names=("assigner", "assigner_worker", "assigner_relay", "ingest", "stats"),
    suffix: str = "",
) -> list[tuple[str, subprocess.Popen, Path]]:
    """Start py-spy on each named process for `seconds`; (name, py-spy process, output file) of each."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        console.print("[yellow]py-spy not found (pip install py-spy): no profiles[/yellow]")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for name in names:
        pid = pids.get(name)
        if not pid:
            continue
        raw = out_dir / f"{name}{suffix}.collapsed.txt"
        argv = [
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
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append((name, proc, raw))
    return running


async def collect_profiles(spies: list[tuple[str, subprocess.Popen, Path]]) -> dict[str, dict]:
    """Wait for each py-spy to finish (killing one that hangs) and summarise what it recorded."""
    for _, proc, _ in spies:
        try:
            await asyncio.to_thread(proc.wait, timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {name: summarize_profile(raw) for name, _, raw in spies}


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
    """The library a frame belongs to, from its file."""
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
