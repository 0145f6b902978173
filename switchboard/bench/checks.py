"""What the bench checks after the load: everything acknowledged is stored exactly once, the
assigner's records are consistent, stats agrees with them, and how far behind stats was."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import asyncpg

from shared.db import Queries
from shared.settings import Settings
from switchboard.bench.load import Recorder
from switchboard.bench.quantiles import summary_ms

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")


def run_pattern(run_id: str) -> str:
    """The LIKE pattern of this run's message ids."""
    return f"b{run_id}-%"


async def wait_drained(pool: asyncpg.Pool, rec: Recorder, run_id: str, timeout_s: float) -> dict:
    """Wait until every acknowledged user and operator message of this run is stored by the assigner (bounded)."""
    started = time.monotonic()
    expected = len(rec.user_acked) + len(rec.op_acked)
    stored = 0
    while time.monotonic() - started < timeout_s:
        async with pool.acquire() as conn:
            stored = await conn.fetchval(QUERIES.count_run_messages, run_pattern(run_id))
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
    async with pool.acquire() as conn:
        rows = await conn.fetch(QUERIES.run_messages, run_pattern(run_id))
        answered = await conn.fetch(QUERIES.answered_per_second)
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
    """Lost, unexpected and doubled messages of this run; chats whose records disagree."""
    stored_users = set(users)
    lost_users = rec.user_acked - stored_users
    unexpected_users = stored_users - rec.user_acked - rec.user_unconfirmed
    lost_ops = rec.op_acked - ops
    unexpected_ops = ops - rec.op_acked - rec.op_unconfirmed
    async with pool.acquire() as conn:
        mismatched = await conn.fetchval(QUERIES.chats_with_message_count_mismatch)
        two_active = await conn.fetchval(QUERIES.chats_with_two_active_assignments)
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
    """`switchboard reconcile` on the bench's database: stats recounted from the assigner's records."""
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
            rows = await conn.fetch(QUERIES.stats_applied_at, chunk)
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
