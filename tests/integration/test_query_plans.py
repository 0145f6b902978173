"""The hot statements' cached plans probe indexes even when they were made on empty tables, on real Postgres.

asyncpg prepares every statement once per connection; after five executions Postgres may keep a
generic plan for it, made from the table sizes of that moment, until the table is analysed. A
service started on a fresh database makes those plans on empty tables: at Postgres' default
`random_page_cost` (4) they scanned `ingest.message_keys`, `assigner.chats` and
`assigner.assignments` whole, and each call grew slower with the table. The services' sessions
set it to 1.1 (`shared.db.SESSION_SETTINGS`), where the same plans use the indexes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import db

HOT = {
    "ingest": ["claim_keys", "read_keys", "mark_acked"],
    "assigner": [
        "lock_chats",
        "lock_chats_with_known",
        "read_chats",
        "write_changes",
        "update_assignments",
        "lock_chats_of_assignments",
        "chat_views",
        "routing_context",
        "claim_lanes",
    ],
    "delivery": ["batch_state", "save_chat_state", "append_stream_events", "events_after_many"],
}
# Tables that stay small by design (settings and configuration): a scan of those is the right plan.
SMALL = {
    "assigner.queues",
    "assigner.operators",
    "delivery.webhook_endpoints",
    "queues",
    "operators",
    "webhook_endpoints",
}
SEQ_SCAN = re.compile(r"Seq Scan on (\S+)")


async def generic_plan(conn, sql: str) -> str:
    """The plan Postgres would cache for `sql` as a prepared statement (all parameters unknown)."""
    await conn.execute(f"PREPARE hot AS {sql}")
    try:
        params = len((await conn.prepare(sql)).get_parameters())
        arguments = f"({', '.join(['NULL'] * params)})" if params else ""
        return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE hot{arguments}"))
    finally:
        await conn.execute("DEALLOCATE hot")


@pytest.mark.parametrize("service", sorted(HOT))
async def test_generic_plans_made_on_empty_tables_probe_indexes(env, service):
    queries = db.Queries(Path(__file__).parents[2] / "services" / service / "sql" / "queries.sql")
    pool = await db.create_pool(env.database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            scans = {}
            for name in HOT[service]:
                plan = await generic_plan(conn, getattr(queries, name))
                tables = set(SEQ_SCAN.findall(plan)) - SMALL
                if tables:
                    scans[name] = sorted(tables)
    finally:
        await pool.close()
    assert scans == {}, scans
