"""The plumbing every service stands on: migrations, producer → consumer, dedup, commit-after-transaction."""

import asyncio
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.idle_monitor.main import MIGRATIONS as TRACKED_MIGRATIONS
from shared import db, migrations
from shared.events import TOPIC_INBOUND
from shared.kafka import BatchConsumer
from shared.kafka.broker import make_broker
from shared.tracking import EventIds
from tests.harness import Producer, eventually, user_message

# The consumer's event ids go to a real service schema's processed_events, through shared.tracking.
TRACKED_SCHEMA = "idle_monitor"


async def test_migrations_apply_once_in_order_and_again_is_a_no_op(env, tmp_path: Path):
    (tmp_path / "0001_create_things.sql").write_text("CREATE TABLE mig_t.things (id int PRIMARY KEY);")
    (tmp_path / "0002_add_name.sql").write_text("ALTER TABLE mig_t.things ADD COLUMN name text;")
    conn = await asyncpg.connect(env.database_url)
    try:
        first = await migrations.apply(conn, "mig_t", tmp_path)
        again = await migrations.apply(conn, "mig_t", tmp_path)
        rows = await conn.fetch("SELECT version, name FROM mig_t.schema_migrations ORDER BY version")
        assert [m.version for m in first] == [1, 2] and again == []
        assert [(r["version"], r["name"]) for r in rows] == [(1, "create_things"), (2, "add_name")]
        assert await migrations.pending(conn, "mig_t", tmp_path) == []
    finally:
        await conn.close()


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        migrations.discover(tmp_path)


async def _plumbing(env):
    conn = await asyncpg.connect(env.database_url)
    await migrations.apply(conn, TRACKED_SCHEMA, TRACKED_MIGRATIONS)
    await conn.execute("""
        CREATE SCHEMA IF NOT EXISTS plumbing;
        CREATE TABLE IF NOT EXISTS plumbing.effects (event_id uuid NOT NULL, text text NOT NULL);""")
    await conn.close()


async def effects(env):
    conn = await asyncpg.connect(env.database_url)
    try:
        return await conn.fetch("SELECT event_id, text FROM plumbing.effects")
    finally:
        await conn.close()


class Crash(Exception):
    pass


async def store_effects(conn, batch):
    await conn.executemany(
        "INSERT INTO plumbing.effects (event_id, text) VALUES ($1, $2)",
        [(i.event.event_id, i.event.payload.text) for i in batch],
    )


def plumbing_consumer(env, pool, group_id: str, apply) -> tuple:
    """A broker and a consumer group of chat.inbound applying with `apply`, event ids in a real schema."""
    broker = make_broker(env.settings, group_id)
    consumer = BatchConsumer(
        settings=env.settings,
        pool=pool,
        broker=broker,
        group_id=group_id,
        topics=[TOPIC_INBOUND],
        tracker=EventIds(TRACKED_SCHEMA),
        apply=apply,
    )
    return broker, consumer


async def run_consumer(env, *, crash_before_commit: bool, expect: int):
    """Consume chat.inbound into plumbing.effects; optionally die after the transaction, before the commit."""
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    broker, consumer = plumbing_consumer(env, pool, "plumbing", store_effects)
    await consumer.start()
    if crash_before_commit:

        async def die(*_a, **_k):
            raise Crash("killed between the transaction and the offset commit")

        consumer.subscriber.consumer.commit = die
    try:
        await eventually(lambda: _count(env, expect), timeout=30)
        await asyncio.sleep(0.5)
    finally:
        if crash_before_commit:
            await consumer.subscriber.stop()  # dies: no flush, no commit (its commit raises)
        else:
            await consumer.stop()
        await broker.stop()
        await pool.close()


async def _count(env, expect):
    return len(await effects(env)) >= expect


async def test_an_event_is_applied_once_even_when_the_consumer_dies_before_committing(env):
    await _plumbing(env)
    events = [user_message(f"chat-{i}", f"text {i}") for i in range(20)]
    async with Producer(env.settings) as kafka:
        for e in events:
            await kafka.send(TOPIC_INBOUND, e)
    await run_consumer(env, crash_before_commit=True, expect=20)
    # One more event behind each one on the same key (same partition): once these are applied,
    # the restarted group has re-read every uncommitted record before them.
    sentinels = [user_message(f"chat-{i}", f"sentinel {i}") for i in range(20)]
    async with Producer(env.settings) as kafka:
        for e in sentinels:
            await kafka.send(TOPIC_INBOUND, e)
    await run_consumer(env, crash_before_commit=False, expect=40)
    rows = await effects(env)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events + sentinels)


async def test_a_redelivery_from_the_start_changes_nothing(env):
    await _plumbing(env)
    events = [user_message(f"chat-{i}", f"text {i}") for i in range(5)]
    async with Producer(env.settings) as kafka:
        for e in events:
            await kafka.send(TOPIC_INBOUND, e)
        await run_consumer(env, crash_before_commit=False, expect=5)
        # The same events again (a producer retry, a replay), each followed by a sentinel on its key.
        sentinels = [user_message(f"chat-{i}", f"sentinel {i}") for i in range(5)]
        for e, s in zip(events, sentinels):
            await kafka.send(TOPIC_INBOUND, e)
            await kafka.send(TOPIC_INBOUND, s)
    await run_consumer(env, crash_before_commit=False, expect=10)
    rows = await effects(env)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events + sentinels)


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing(env):
    from tests.harness import read_topic

    await _plumbing(env)
    good = user_message("chat-p", "after the poison")
    async with Producer(env.settings) as kafka:
        await kafka.send_raw(TOPIC_INBOUND, b"{not json", b"chat-p")
        await kafka.send(TOPIC_INBOUND, good)
    await run_consumer(env, crash_before_commit=False, expect=1)
    dead = await read_topic(env.settings, "chat.dlq", min_records=1)
    headers = dict(dead[0].headers)
    assert dead[0].value == b"{not json" and dead[0].key == b"chat-p"
    assert b"invalid JSON" in headers["dlq.reason"]
    assert headers["dlq.source_topic"] == env.settings.topic(TOPIC_INBOUND).encode()
    assert "dlq.source_partition" in headers and "dlq.source_offset" in headers
    assert [r["event_id"] for r in await effects(env)] == [good.event_id]


async def test_the_lag_gauge_counts_the_records_not_yet_applied(env):
    """While every batch fails the lag is every record produced; once they apply it is zero."""
    await _plumbing(env)
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    failing = True

    async def apply(conn, batch):
        if failing:
            raise RuntimeError("not yet")
        await store_effects(conn, batch)

    broker, consumer = plumbing_consumer(env, pool, "plumbing-lag", apply)
    group = env.settings.group("plumbing-lag")

    def lag() -> float:
        return sum(
            s.value
            for m in REGISTRY.collect()
            if m.name == "switchboard_consumer_lag_records"
            for s in m.samples
            if s.labels["group"] == group
        )

    events = [user_message(f"chat-{i}", f"text {i}") for i in range(20)]
    async with Producer(env.settings) as kafka:
        for e in events:
            await kafka.send(TOPIC_INBOUND, e)
    await consumer.start()
    try:

        async def all_behind():
            return lag() == len(events)

        await eventually(all_behind, timeout=30)
        failing = False

        async def caught_up():
            return lag() == 0 and len(await effects(env)) == len(events)

        await eventually(caught_up, timeout=30)
    finally:
        await consumer.stop()
        await broker.stop()
        await pool.close()
