"""The scale check: pull latency with 1 thousand, 100 thousand and 1 million waiting chats, and the
plan of the claim query at each size."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
from rich.progress import Progress

from shared.db import Queries
from switchboard.bench import routed
from switchboard.bench.checks import QUERIES
from switchboard.bench.load import Load
from switchboard.bench.metrics import histogram, quantiles_ms
from switchboard.bench.options import Options
from switchboard.bench.profiling import collect_profiles, start_profiles
from switchboard.bench.quantiles import pct, summary_ms
from switchboard.bench.report import cpu_delta
from switchboard.services import ROOT as SERVICES_ROOT

# The claim every batch of pulls runs (the assigner's own SQL, read from its file), for 8 pullers.
ASSIGNER_QUERIES = Queries(SERVICES_ROOT / "assigner" / "sql" / "queries.sql")
CLAIM_EXPLAIN = "EXPLAIN (ANALYZE, FORMAT JSON) " + ASSIGNER_QUERIES.claim_waiting_chats
CLAIM_PULLERS = 8
WARMUP_S = 2.0  # pulls of each size's first seconds are not measured
SCALE_PREFIX = "scale-op"  # the pullers are scale-op-<j>


async def load_waiting_chats(
    pool: asyncpg.Pool, first: int, last: int, on_progress=None, routed_chats: bool = False
) -> None:
    """Insert waiting chats scale-<n> for n in [first, last], waiting_since spread over the last day
    (routed: over the routed check's queues, skill sets and priorities)."""
    chunk = 100_000
    for a in range(first, last + 1, chunk):
        b = min(last, a + chunk - 1)
        if routed_chats:
            await routed.load(pool, a, b)
        else:
            async with pool.acquire() as conn:
                await conn.execute(QUERIES.insert_waiting_chats, a, b, timeout=600)
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
    """Each size in turn (cumulative): load the waiting chats, then the operators pull and release."""
    sizes = sorted(opts.scale_sizes)
    results = []
    loaded = 0
    if opts.scale_routed:
        await routed.configure(pool, SCALE_PREFIX, opts.scale_operators)
    for size in sizes:
        task = (
            progress.add_task(f"scale      loading {size:,} waiting chats", total=max(1, size - loaded))
            if progress
            else None
        )
        load_started = time.monotonic()
        if size > loaded:
            await load_waiting_chats(
                pool,
                loaded + 1,
                size,
                (lambda n, t=task: progress.update(t, completed=n)) if progress else None,
                routed_chats=opts.scale_routed,
            )
        async with pool.acquire() as conn:
            await conn.execute(QUERIES.vacuum_chats, timeout=600)
            waiting = await conn.fetchval(QUERIES.count_waiting_chats)
        load_s = time.monotonic() - load_started
        loaded = size
        result = {
            "waiting_chats": size,
            "waiting_chats_counted": waiting,
            "load_seconds": round(load_s, 1),
            "operators": opts.scale_operators,
        }
        profile_this = opts.profile and size == sizes[-1] and not load.stack.external
        results.append({**result, **await _pull_at(load, pool, opts, progress, task, size, profile_this)})
        if progress:
            progress.update(task, description=f"scale      {size:,} waiting: done")
    small, large = results[0], results[-1]
    ratio = None
    if small["pull_latency_ms"]["p99"] and large["pull_latency_ms"]["p99"]:
        ratio = round(large["pull_latency_ms"]["p99"] / small["pull_latency_ms"]["p99"], 2)
    ratio50 = None
    if small["pull_latency_ms"]["p50"] and large["pull_latency_ms"]["p50"]:
        ratio50 = round(large["pull_latency_ms"]["p50"] / small["pull_latency_ms"]["p50"], 2)
    return {
        "routed": opts.scale_routed,
        "operators": opts.scale_operators,
        "think_ms": opts.scale_think_ms,
        "sizes": results,
        "p99_ratio_largest_to_smallest": ratio,
        "p50_ratio_largest_to_smallest": ratio50,
    }


async def _pull_at(
    load: Load, pool: asyncpg.Pool, opts: Options, progress: Progress | None, task, size: int, profile_this: bool
) -> dict:
    """The scale operators pulling and releasing for WARMUP_S + scale_duration_s; what they measured."""
    if opts.scale_routed:
        plan = await routed.claim_plan(pool, ASSIGNER_QUERIES.waiting_lanes, ASSIGNER_QUERIES.claim_lanes, SCALE_PREFIX)
    else:
        plan = await claim_plan(pool)
    before = await load.scrape()
    load.rec.pulls.clear()
    load.rec.releases.clear()
    load.running = True
    actors = [
        asyncio.create_task(load.operator(j, prefix=SCALE_PREFIX, scale=True)) for j in range(opts.scale_operators)
    ]
    total = opts.scale_duration_s + WARMUP_S
    if progress:
        progress.update(task, total=total, completed=0, description=f"scale      {size:,} waiting: pulling")
    t0 = time.time()
    cpu0 = load.stack.watched.cpu()
    spies = []
    if profile_this:
        spies = start_profiles(
            load.stack.watched.pids,
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
    profile = await collect_profiles(spies)
    measured = [p for p in load.rec.pulls if p[0] >= t0 + WARMUP_S]
    assigned = [p[1] for p in measured if p[2] == "assigned"]
    server = {}
    if before is not None and after is not None:
        server = quantiles_ms(
            histogram(after, "switchboard_pull_latency_seconds", result="assigned"),
            histogram(before, "switchboard_pull_latency_seconds", result="assigned"),
            2,
        )
    window = max(0.001, time.time() - (t0 + WARMUP_S))
    if progress:
        progress.update(task, completed=total)
    return {
        "pulls": len(measured),
        "pulls_per_s": round(len(measured) / window, 1),
        "pull_latency_ms": summary_ms(assigned),
        "empty_pulls": sum(1 for p in measured if p[2] == "empty"),
        "release_latency_ms": summary_ms([r[1] for r in load.rec.releases if r[0] >= t0 + WARMUP_S]),
        "server_pull_latency_ms": server,
        "claim_plan": plan,
        "cpu_cores": cpu_delta(cpu0, cpu1, elapsed),
        **({"profile": profile} if profile else {}),
    }
