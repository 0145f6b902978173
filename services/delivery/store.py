"""Postgres access for delivery: the replay window (stream events per chat) and its pruning."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import asyncpg

from services.delivery.domain import StreamEvent, counts_per_chat, number
from shared.db import Queries

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
PAGE = 500


async def append(conn: asyncpg.Connection, events: list[StreamEvent]) -> list[tuple[int, StreamEvent]]:
    """Number and store a batch's stream events and wake the streams of their chats, in the caller's transaction."""
    if not events:
        return []
    counts = counts_per_chat(events)
    rows = await conn.fetch(QUERIES.reserve_sequences, list(counts), list(counts.values()))
    numbered = number(events, {r["chat_id"]: r["last_seq"] for r in rows})
    await conn.execute(
        QUERIES.insert_stream_events,
        [e.chat_id for _, e in numbered], [seq for seq, _ in numbered], [e.event_id for _, e in numbered],
        [e.type for _, e in numbered], [e.occurred_at for _, e in numbered],
        [json.dumps(e.data) for _, e in numbered],
    )
    await conn.fetchval(QUERIES.notify_chats, list(counts))
    return numbered


class Store:
    """Reads and maintenance of the replay window, through named queries."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def events_after(self, chat_id: str, seq: int, limit: int = PAGE) -> list[asyncpg.Record]:
        """A chat's stream events after `seq`, oldest first (`seq`, `type`, `occurred_at`, `data` as JSON text)."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(QUERIES.events_after, chat_id, seq, limit)

    async def prune(self, before: datetime, batch: int = 5000) -> int:
        """Delete stream events and applied ids older than `before`, a batch per transaction; returns events deleted."""
        total = 0
        async with self.pool.acquire() as conn:
            while True:
                n = await conn.fetchval(QUERIES.prune_stream_events, before, batch)
                total += n
                if n < batch:
                    break
            while await conn.fetchval(QUERIES.prune_processed_events, before, batch) >= batch:
                pass
        return total
