"""`switchboard reconcile` and `switchboard stats rebuild`: prove the stats figures exact.

reconcile recounts every figure from the assigner's authoritative tables (read-only) and lists
each difference from what stats holds. rebuild replays chat.lifecycle from the earliest offset
into a shadow schema through the very statements the live consumer runs, then compares the
replayed figures with the live ones. Both wait (bounded) for a quiescent moment first: an empty
assigner outbox and no stats consumer lag, since figures in flight are not differences.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.stats import domain, handlers, store
from services.stats.main import GROUP_ID, SCHEMA
from shared import db
from shared.events import TOPIC_LIFECYCLE
from shared.kafka.decoding import Incoming, Poison, decode_record
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = db.Queries(Path(__file__).parent / "sql" / "reconcile.sql")
SHADOW_SCHEMA = "stats_rebuild"  # one of shared.tracking.SCHEMAS
# What rebuild compares: every figure of every table.
TABLES = (
    ("operator_day", domain.OPERATOR_COUNTERS),
    ("operator_total", domain.OPERATOR_COUNTERS),
    ("chat", domain.CHAT_COUNTERS),
    ("queue_day", domain.QUEUE_COUNTERS),
)
# What reconcile can recount from the assigner's records. Per queue that is `assigned` alone (each
# assignment records the queue it started in): the assigner keeps no history of queue entries,
# answers, completions or first waits (a reopened chat overwrites them), so those per-queue figures
# are proven by rebuild's replay instead.
RECOUNTED = TABLES[:3]
QUEUE_ASSIGNED = ("assigned",)


@dataclass
class Report:
    """The outcome of a comparison: every differing figure, and what made the moment not quiescent."""

    differences: list[domain.Difference] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)
    not_quiescent: str | None = None
    replayed: int = 0
    duplicates: int = 0
    undecodable: int = 0


async def _connect(settings: Settings, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_url,
        server_settings=dict(db.SESSION_SETTINGS, application_name="switchboard-reconcile", search_path=schema),
    )


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    described = await admin.describe_topics([topic])
    found = [p["partition"] for d in described if d["topic"] == topic and not d["error_code"] for p in d["partitions"]]
    return [TopicPartition(topic, p) for p in sorted(found)]


async def lifecycle_partitions(settings: Settings) -> list[TopicPartition]:
    """The partitions of the (prefixed) chat.lifecycle topic; empty when it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        return await _partitions(admin, settings.topic(TOPIC_LIFECYCLE))
    finally:
        await admin.close()


async def consumer_lag(settings: Settings, group: str = GROUP_ID) -> int:
    """Records of chat.lifecycle the (prefixed) group has not committed yet, over all partitions."""
    topic = settings.topic(TOPIC_LIFECYCLE)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    await admin.start()
    try:
        partitions = await _partitions(admin, topic)
        if not partitions:
            return 0
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.group(group), partitions=partitions)
        lag = 0
        for tp in partitions:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else starts[tp]
            lag += max(0, ends[tp] - position)
        return lag
    finally:
        await admin.close()
        await consumer.stop()


async def wait_quiescent(settings: Settings, timeout_s: float) -> str | None:
    """Wait until the outbox is empty and stats has consumed everything; None, or why not."""
    deadline = time.monotonic() + timeout_s
    conn = await _connect(settings, SCHEMA)
    try:
        while True:
            backlog = await conn.fetchval(QUERIES.outbox_backlog)
            lag = await consumer_lag(settings)
            if backlog == 0 and lag == 0:
                return None
            if time.monotonic() >= deadline:
                return f"assigner outbox backlog {backlog}, stats consumer lag {lag} after {timeout_s:.0f}s"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def _keyed(rows, key_fields: tuple[str, ...]) -> dict[tuple, dict]:
    return {tuple(r[k] for k in key_fields): dict(r) for r in rows}


async def reconcile(settings: Settings, *, quiesce_timeout_s: float = 30.0) -> Report:
    """Compare every stats figure with a recount from the assigner's records, in one snapshot."""
    report = Report(not_quiescent=await wait_quiescent(settings, quiesce_timeout_s))
    conn = await _connect(settings, SCHEMA)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            expected = {
                "operator_day": _keyed(await conn.fetch(QUERIES.recount_operator_days), ("operator_id", "day")),
                "operator_total": _keyed(await conn.fetch(QUERIES.recount_operator_totals), ("operator_id",)),
                "chat": _keyed(await conn.fetch(QUERIES.recount_chats), ("chat_id",)),
            }
            expected["queue_day"] = _keyed(await conn.fetch(QUERIES.recount_queue_assigned), ("queue_id", "day"))
            actual = await store.figures(conn)
    finally:
        await conn.close()
    _compare_all(report, expected, actual, RECOUNTED + (("queue_day", QUEUE_ASSIGNED),))
    return report


def _compare_all(report: Report, expected: dict, actual: dict, tables=TABLES) -> None:
    for table, names in tables:
        report.compared[table] = len(set(expected[table]) | set(actual[table]))
        report.differences.extend(domain.compare(table, names, expected[table], actual[table]))


async def rebuild(
    settings: Settings,
    *,
    shadow: str = SHADOW_SCHEMA,
    keep: bool = False,
    timeout_s: float = 600.0,
    quiesce_timeout_s: float = 30.0,
) -> Report:
    """Replay chat.lifecycle from the earliest offset into `shadow`; compare with the live figures.

    `shadow` must be one of shared.tracking.SCHEMAS (its processed_events is claimed there).
    """
    tracker = EventIds(shadow)  # before anything is created: an unknown shadow schema is refused
    report = Report()
    lock = await _connect(settings, SCHEMA)
    try:
        if not await lock.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"stats-rebuild:{shadow}"):
            raise RuntimeError(f"another rebuild into {shadow} is running")
        await lock.execute(store.QUERIES.create_shadow_schema, shadow)
        pool = await store.create_pool(settings, shadow, app="switchboard-rebuild", max_size=2)
        try:
            await _replay(settings, pool, tracker, report, timeout_s)
        finally:
            await pool.close()
        report.not_quiescent = await wait_quiescent(settings, quiesce_timeout_s)
        async with lock.transaction(isolation="repeatable_read", readonly=True):
            await lock.execute("SELECT set_config('search_path', $1, true)", shadow)
            replayed = await store.figures(lock)
            await lock.execute("SELECT set_config('search_path', $1, true)", SCHEMA)
            live = await store.figures(lock)
        _compare_all(report, replayed, live)
        if not keep and not report.differences:
            await lock.execute(store.QUERIES.drop_shadow_schema, shadow)
    finally:
        await lock.close()
    return report


async def _replay(settings: Settings, pool: asyncpg.Pool, tracker: EventIds, report: Report, timeout_s: float) -> None:
    apply = handlers.make_apply(observe=False)
    partitions = await lifecycle_partitions(settings)
    if not partitions:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.consumer_max_records,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # Replay up to the end as of now; the live figures are compared at that point.
        ends = await consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"replay did not reach the end offsets within {timeout_s:.0f}s")
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                records = [r for r in records if r.offset < ends[tp]]
                if records:
                    await _apply_records(pool, tracker, apply, tp, records, report)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()


async def _apply_records(pool, tracker: EventIds, apply, tp: TopicPartition, records, report: Report) -> None:
    """Apply one partition's records as the live consumer does: new event ids claimed in the effect's transaction."""
    good = []
    for rec in records:
        try:
            good.append(
                Incoming(decode_record(TOPIC_LIFECYCLE, rec.key, rec.value), TOPIC_LIFECYCLE, tp.partition, rec.offset)
            )
        except Poison:
            report.undecodable += 1  # the live consumer dead-lettered it too
    if not good:
        return
    async with pool.acquire() as conn:
        async with conn.transaction():
            applied, _ = await tracker.claim_new(conn, good)
            if applied:
                await apply(conn, applied)
    report.replayed += len(applied)
    report.duplicates += len(good) - len(applied)


def _print(report: Report, expected_name: str, actual_name: str) -> int:
    if report.not_quiescent:
        print(f"warning: not quiescent ({report.not_quiescent}); figures in flight show as differences")
    for diff in report.differences:
        print(diff.describe(expected_name, actual_name))
    checked = ", ".join(f"{n} {t} rows" for t, n in report.compared.items())
    if report.differences:
        print(f"{len(report.differences)} difference(s) ({checked})")
        return 1
    print(f"no differences ({checked})")
    return 0


def run_reconcile(settings: Settings) -> int:
    """CLI entry: print each difference between stats and the assigner's records; 1 if any."""
    return _print(asyncio.run(reconcile(settings)), "assigner", "stats")


def run_rebuild(settings: Settings) -> int:
    """CLI entry: replay chat.lifecycle into a shadow schema, print each difference from live; 1 if any."""
    report = asyncio.run(rebuild(settings))
    print(
        f"replayed {report.replayed} event(s) into {SHADOW_SCHEMA} "
        f"({report.duplicates} duplicate(s) skipped, {report.undecodable} undecodable)"
    )
    code = _print(report, "replay", "live")
    if code:
        print(f"kept schema {SHADOW_SCHEMA} for inspection")
    return code
