"""Postgres access for delivery: the replay window (events per stream), chat holders, pruning."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import asyncpg

from services.delivery.domain import Holder, StreamEvent, counts_per_stream, number
from shared.db import Queries
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
PAGE = 500


async def holders(conn: asyncpg.Connection, chat_ids: list[str]) -> dict[str, Holder]:
    """Who holds these chats now."""
    if not chat_ids:
        return {}
    rows = await conn.fetch(QUERIES.held_chats, chat_ids)
    return {r["chat_id"]: Holder(r["operator_id"], r["assignment_id"]) for r in rows}


async def save_holders(conn: asyncpg.Connection, changed: dict[str, Holder | None]) -> None:
    """Record new holders and forget chats nobody holds any more, in the caller's transaction."""
    held = {chat: h for chat, h in sorted(changed.items()) if h is not None}
    freed = sorted(chat for chat, h in changed.items() if h is None)
    if held:
        await conn.execute(
            QUERIES.hold_chats,
            list(held),
            [h.operator_id for h in held.values()],
            [h.assignment_id for h in held.values()],
        )
    if freed:
        await conn.execute(QUERIES.release_chats, freed)


async def append(conn: asyncpg.Connection, events: list[StreamEvent]) -> list[tuple[int, StreamEvent]]:
    """Number and store a batch's stream events and wake their streams' readers, in the caller's transaction."""
    if not events:
        return []
    counts = counts_per_stream(events)
    rows = await conn.fetch(QUERIES.reserve_sequences, list(counts), list(counts.values()))
    numbered = number(events, {r["stream"]: r["last_seq"] for r in rows})
    await conn.execute(
        QUERIES.insert_stream_events,
        [e.stream for _, e in numbered],
        [seq for seq, _ in numbered],
        [e.event_id for _, e in numbered],
        [e.type for _, e in numbered],
        [e.occurred_at for _, e in numbered],
        [json.dumps(e.data) for _, e in numbered],
    )
    await conn.fetchval(QUERIES.notify_streams, list(counts))
    return numbered


class Store:
    """Reads and maintenance of the replay window, through named queries."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def events_after(self, stream: str, seq: int, limit: int = PAGE) -> list[asyncpg.Record]:
        """A stream's events after `seq`, oldest first (`seq`, `type`, `occurred_at`, `data` as JSON text)."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(QUERIES.events_after, stream, seq, limit)

    async def last_seq(self, stream: str) -> int:
        """The last sequence a stream has given out (0: none yet)."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(QUERIES.last_seq, stream) or 0

    def retention_jobs(self, settings: Settings) -> list[PruneJob]:
        """What shared.retention prunes here: stream events, applied ids and delivered webhooks past the window."""
        keep = timedelta(seconds=settings.delivery_retention_s)
        return [
            PruneJob("delivery.stream_events", QUERIES.prune_stream_events, keep),
            EventIds("delivery").prune_job(keep),
            PruneJob("delivery.webhook_deliveries", QUERIES.prune_webhook_deliveries, keep),
        ]
