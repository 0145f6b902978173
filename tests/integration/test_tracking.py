"""Event-id tracking against real Postgres: an id is applied once per schema, within and across batches."""

import uuid
from datetime import timedelta

from services.idle_monitor.main import MIGRATIONS as IDLE_MIGRATIONS
from services.stats.main import MIGRATIONS as STATS_MIGRATIONS
from shared import db, migrations
from shared.kafka import Incoming
from shared.retention import Pruner
from shared.tracking import EventIds
from tests.harness import user_message


def incoming(event, offset: int) -> Incoming:
    return Incoming(event, "chat.inbound", 0, offset)


async def test_an_event_id_is_claimed_once_per_schema_even_twice_in_one_batch(env):
    conn = await env.connect()
    try:
        await migrations.apply(conn, "idle_monitor", IDLE_MIGRATIONS)
        await migrations.apply(conn, "stats", STATS_MIGRATIONS)
        idle, stats = EventIds("idle_monitor"), EventIds("stats")
        a, b = user_message("chat-a", "a"), user_message("chat-b", "b")
        marker = uuid.uuid4()
        async with conn.transaction():
            new, markers = await idle.claim_new(conn, [incoming(a, 0), incoming(a, 1), incoming(b, 2)], [marker])
        assert [(i.event.event_id, i.offset) for i in new] == [(a.event_id, 0), (b.event_id, 2)]
        assert markers == {marker}
        async with conn.transaction():
            again, markers_again = await idle.claim_new(conn, [incoming(a, 3)], [marker])
        assert again == [] and markers_again == set()
        async with conn.transaction():  # another schema keeps its own record
            other, _ = await stats.claim_new(conn, [incoming(a, 0)])
        assert [i.event.event_id for i in other] == [a.event_id]
    finally:
        await conn.close()


async def test_the_prune_job_forgets_only_ids_past_the_window_so_an_old_id_can_be_claimed_again(env):
    conn = await env.connect()
    try:
        await migrations.apply(conn, "idle_monitor", IDLE_MIGRATIONS)
        ids = EventIds("idle_monitor")
        old, recent = uuid.uuid4(), uuid.uuid4()
        assert await ids.claim(conn, [old, recent]) == {old, recent}
        await conn.execute(
            "UPDATE idle_monitor.processed_events SET applied_at = now() - interval '2 days' WHERE event_id = $1", old
        )
    finally:
        await conn.close()
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    try:
        removed = await Pruner(pool, [ids.prune_job(timedelta(days=1))], batch_size=10, interval_s=60).prune_once()
        assert removed == {"idle_monitor.processed_events": 1}
        async with pool.acquire() as conn:
            assert await ids.claim(conn, [old, recent]) == {old}
    finally:
        await pool.close()
