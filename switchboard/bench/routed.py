"""The routed scale check (issue #16): the scale check's sizes spread over 20 queues and 8 skill sets,
its 200 pullers with mixed profiles (queues, skills, capacity), and the plans of the routed claim.

`--scale-routed` turns it on: `scale.py` calls `configure` before loading, loads with
`insert_routed_waiting_chats` instead of the FIFO rows, and asks `routed_claim_plan` for the plan.
"""

from __future__ import annotations

import json
import random

import asyncpg

from switchboard.bench.checks import QUERIES

QUEUES = [f"q{n:02d}" for n in range(1, 21)]
# The 8 skill sets of the waiting chats (sorted, as the assigner keeps them); chat g gets SKILL_SETS[(g // 20) % 8].
SKILL_SETS = [[], ["en"], ["de"], ["de", "en"], ["billing"], ["billing", "en"], ["fr"], ["en", "fr"]]
PRIORITY_STEP_S = 60


def profile(j: int) -> dict:
    """Puller j's profile: 1 to 5 of the 20 queues, a mix of skills, capacity 1 to 3.

    Every queue is in some puller's reach and every skill set has takers (all speak `en`), so no
    lane is unreachable; the mix makes each pull merge several lanes of different skill sets.
    """
    reach = 1 + j % 5
    queues = sorted({QUEUES[(j + 7 * i) % len(QUEUES)] for i in range(reach)})
    rng = random.Random(j)  # the same mix every run, independent of the queues' pattern
    skills = {"en"} | {s for s, share in (("de", 0.5), ("billing", 0.35), ("fr", 0.3)) if rng.random() < share}
    return {"queues": queues, "skills": sorted(skills), "capacity": 1 + j % 3}


async def configure(pool: asyncpg.Pool, prefix: str, operators: int) -> None:
    """The 20 queues and the pullers' profiles, written straight into the bench's own database."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.executemany(QUERIES.insert_routed_queue, [(q, f"Queue {q}", PRIORITY_STEP_S) for q in QUEUES])
            rows = []
            for j in range(operators):
                p = profile(j)
                rows.append((f"{prefix}-{j}", p["queues"], p["skills"], p["capacity"]))
            await conn.executemany(QUERIES.insert_routed_operator, rows)


async def load(pool: asyncpg.Pool, first: int, last: int) -> None:
    """Waiting chats scale-<n> for n in [first, last], over the 20 queues, 8 skill sets and priorities 0-9."""
    async with pool.acquire() as conn:
        await conn.execute(
            QUERIES.insert_routed_waiting_chats,
            first,
            last,
            QUEUES,
            [",".join(s) for s in SKILL_SETS],
            PRIORITY_STEP_S,
            timeout=600,
        )


def _nodes(plan: dict) -> list[str]:
    nodes, stack = [], [plan["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(f"{node['Node Type']}{' using ' + node['Index Name'] if 'Index Name' in node else ''}")
        stack.extend(node.get("Plans", []))
    return nodes


async def claim_plan(pool: asyncpg.Pool, lane_sql: str, claim_sql: str, prefix: str) -> dict:
    """EXPLAIN ANALYZE of both statements of puller 0's routed pull: finding its lanes, claiming in them.

    `index_scans_only` is true when no node reads a table sequentially or through a bitmap, i.e. each
    lane is found and claimed by index probes whatever the number of waiting chats.
    """
    me = profile(0)
    async with pool.acquire() as conn:
        async with conn.transaction():
            lanes_raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + lane_sql, me["queues"])
            lanes = await conn.fetch(lane_sql, me["queues"])
            mine = [r for r in lanes if set(r["skills"]) <= set(me["skills"])]
            n = len(mine)
            claim_raw = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + claim_sql,
                [r["queue_id"] for r in mine],
                [",".join(r["skills"]) for r in mine],
                [1] * n,
                [None] * n,
                f"{prefix}-0",
                [None] * n,
                [],
            )
    out: dict = {"lanes_in_reach": len(lanes), "lanes_claimed": n}
    index_only = True
    for name, raw in (("lanes", lanes_raw), ("claim", claim_raw)):
        plan = json.loads(raw)[0]
        nodes = _nodes(plan)
        out[name] = {"nodes": nodes, "execution_ms": round(plan.get("Execution Time", 0.0), 3)}
        index_only &= not any(n.startswith(("Seq Scan", "Bitmap Heap Scan")) for n in nodes)
    out["index_scans_only"] = index_only
    out["execution_ms"] = round(out["lanes"]["execution_ms"] + out["claim"]["execution_ms"], 3)
    return out
