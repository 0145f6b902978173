"""The idle ticker's claim and fire against real Postgres and Kafka: locking, and deleting only after the ack."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from services.idle_monitor import domain
from services.idle_monitor.handlers import FireFailed, Ticker
from services.idle_monitor.store import Store
from shared import db
from shared.events import TOPIC_TIMEOUTS, utcnow
from shared.kafka.broker import make_broker
from shared.kafka.publishers import declare
from shared.retention import Pruner
from tests import harness


class UnacknowledgingPublisher:
    """A publisher whose every record is refused, as when the broker is gone."""

    def __init__(self):
        self.sent = 0

    async def publish(self, value, *, key=None, headers=None, correlation_id=None, no_confirm=False):
        self.sent += 1
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(ConnectionError("broker unreachable"))
        return failed


def due_deadline(chat_id: str, seconds_ago: float = 1.0) -> domain.Deadline:
    """A deadline that passed `seconds_ago`."""
    now = utcnow()
    return domain.Deadline(
        uuid.uuid4(), chat_id, "op-1", now - timedelta(seconds=60), now - timedelta(seconds=seconds_ago)
    )


async def arm(store: Store, *deadlines: domain.Deadline) -> None:
    """Arm deadlines directly, as the lifecycle handler would."""
    async with store.pool.acquire() as conn:
        async with conn.transaction():
            await store.apply_changes(conn, domain.TimerChanges(arm=deadlines))


async def armed(store: Store) -> set[uuid.UUID]:
    """Assignment ids with an armed deadline."""
    return {r["assignment_id"] for r in await store.list_armed(1000)}


async def test_a_deadline_kafka_did_not_acknowledge_stays_armed_and_fires_on_a_later_round(env):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=4)
    store = Store(pool)
    broker = make_broker(env.settings, "idle_monitor")
    timeouts = declare(broker, env.settings, TOPIC_TIMEOUTS)
    await broker.connect()
    try:
        deadline = due_deadline("chat-unacked")
        await arm(store, deadline)
        refusing = UnacknowledgingPublisher()
        with pytest.raises(FireFailed, match="1 of 1"):
            await Ticker(store, refusing, env.settings).fire_due()
        assert refusing.sent == 1
        assert await armed(store) == {deadline.assignment_id}

        assert await Ticker(store, timeouts, env.settings).fire_due() == 1
        assert await armed(store) == set()
        records = await harness.read_topic(env.settings, TOPIC_TIMEOUTS, min_records=1, timeout=10)
    finally:
        await broker.stop()
        await pool.close()
    assert [harness.record_json(r)["event_id"] for r in records] == [str(domain.idle_event_id(deadline.assignment_id))]


async def test_a_deadline_claimed_by_one_instance_is_skipped_by_another(env):
    pool = await db.create_pool(env.database_url, min_size=2, max_size=4)
    store = Store(pool)
    try:
        first, second = due_deadline("chat-1", 2.0), due_deadline("chat-2", 1.0)
        await arm(store, first, second)
        async with pool.acquire() as holder, pool.acquire() as other:
            async with holder.transaction():
                held = await store.claim_due(holder, utcnow(), 1)
                async with other.transaction():
                    rest = await store.claim_due(other, utcnow(), 10)
        assert [d.assignment_id for d in held] == [first.assignment_id]
        assert [d.assignment_id for d in rest] == [second.assignment_id]
    finally:
        await pool.close()


async def test_a_deadline_still_ahead_is_not_claimed(env):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    store = Store(pool)
    try:
        ahead = due_deadline("chat-ahead", seconds_ago=-30)
        await arm(store, ahead)
        async with pool.acquire() as conn, conn.transaction():
            assert await store.claim_due(conn, utcnow(), 10) == []
            assert [d.assignment_id for d in await store.claim_due(conn, utcnow() + timedelta(seconds=31), 10)] == [
                ahead.assignment_id
            ]
    finally:
        await pool.close()


async def test_a_round_fires_at_most_its_batch_and_the_rest_fire_on_the_next(env):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=4)
    store = Store(pool)
    broker = make_broker(env.settings, "idle_monitor")
    timeouts = declare(broker, env.settings, TOPIC_TIMEOUTS)
    await broker.connect()
    try:
        await arm(store, *(due_deadline(f"chat-{n}", seconds_ago=10 - n) for n in range(5)))
        ticker = Ticker(store, timeouts, env.settings, batch_size=3)
        assert await ticker.fire_due() == 3
        assert len(await armed(store)) == 2
        assert await ticker.fire_due() == 2
        assert await ticker.fire_due() == 0
        records = await harness.read_topic(env.settings, TOPIC_TIMEOUTS, min_records=5, timeout=10)
    finally:
        await broker.stop()
        await pool.close()
    assert sorted(r.key for r in records) == [f"chat-{n}".encode() for n in range(5)]


async def test_old_tombstones_and_applied_ids_are_pruned_and_recent_ones_kept(env):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    store = Store(pool)
    old, recent = uuid.uuid4(), uuid.uuid4()
    older = [uuid.uuid4() for _ in range(4)]
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO idle_monitor.ended_assignments (assignment_id, ended_at, recorded_at) "
                "VALUES ($1, now(), now() - interval '9 days'), ($2, now(), now())",
                old,
                recent,
            )
            await conn.execute(
                "INSERT INTO idle_monitor.processed_events (event_id, applied_at) "
                "VALUES ($1, now() - interval '9 days'), ($2, now())",
                old,
                recent,
            )
            await conn.execute(
                "INSERT INTO idle_monitor.processed_events (event_id, applied_at) "
                "SELECT unnest($1::uuid[]), now() - interval '30 days'",
                older,
            )
            # Batches of 2: a backlog drains in one round, several short statements.
            pruner = Pruner(pool, store.retention_jobs(env.settings), batch_size=2, interval_s=3600)
            assert await pruner.prune_once() == {
                "idle_monitor.ended_assignments": 1,
                "idle_monitor.processed_events": 5,
            }
            assert await conn.fetchval("SELECT array_agg(assignment_id) FROM idle_monitor.ended_assignments") == [
                recent
            ]
            assert await conn.fetchval("SELECT array_agg(event_id) FROM idle_monitor.processed_events") == [recent]
    finally:
        await pool.close()
