"""Postgres access for delivery: the replay window (events per stream), chat holders, queue depths, pruning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg

from services.delivery.domain import (
    Holder,
    QueueMoves,
    StreamEvent,
    counts_per_stream,
    notify_payloads,
    operator_queues,
    positions,
)
from shared.db import Queries
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
PAGE = 500


@dataclass(frozen=True)
class BatchState:
    """What a poll reads before applying: the chats' holders and waiting queues, the types webhooks want."""

    holders: dict[str, Holder]
    waiting: dict[str, str]
    webhook_types: frozenset[str]  # empty: no endpoint; `*` (domain.ANY_TYPE): some endpoint wants every type


async def batch_state(conn: asyncpg.Connection, held_chats: list[str], queue_chats: list[str]) -> BatchState:
    """One read per poll: who holds `held_chats`, where `queue_chats` wait, what webhook endpoints want."""
    holders: dict[str, Holder] = {}
    waiting: dict[str, str] = {}
    types: set[str] = set()
    for r in await conn.fetch(QUERIES.batch_state, held_chats, queue_chats):
        kind = r["kind"]
        if kind == "held":
            holders[r["chat_id"]] = Holder(r["value"], r["ref"])
        elif kind == "waiting":
            waiting[r["chat_id"]] = r["value"]
        else:
            types.add(r["value"])
    return BatchState(holders, waiting, frozenset(types))


async def save_chat_state(conn: asyncpg.Connection, holders: dict[str, Holder | None], moves: QueueMoves) -> None:
    """Record the chats' new holders and waiting queues and the queues' depths, and wake depth readers, in one statement."""
    if not holders and not moves.chats and not moves.deltas:
        return
    held = {chat: h for chat, h in sorted(holders.items()) if h is not None}
    waiting = {chat: q for chat, q in moves.chats.items() if q is not None}
    await conn.execute(
        QUERIES.save_chat_state,
        list(held),
        [h.operator_id for h in held.values()],
        [h.assignment_id for h in held.values()],
        sorted(chat for chat, h in holders.items() if h is None),
        list(waiting),
        list(waiting.values()),
        [chat for chat, q in moves.chats.items() if q is None],
        list(moves.deltas),
        list(moves.deltas.values()),
    )


async def save_operator_queues(
    conn: asyncpg.Connection, profiles: dict[str, tuple[tuple[str, ...], str] | None]
) -> None:
    """Record a poll's operator profile changes (the queues each operator's stream shows)."""
    if not profiles:
        return
    kept = {op: p for op, p in sorted(profiles.items()) if p is not None}
    await conn.execute(
        QUERIES.save_operator_queues,
        list(kept),
        [",".join(q) for q, _ in kept.values()],
        [name for _, name in kept.values()],
        sorted(op for op, p in profiles.items() if p is None),
    )


async def append(conn: asyncpg.Connection, events: list[StreamEvent]) -> int:
    """Number and store a batch's stream events and wake their streams' readers, in one statement; returns how many."""
    if not events:
        return 0
    counts = counts_per_stream(events)
    dumped: dict[int, str] = {}  # a message shown on a chat and an operator stream shares its data: dump it once
    data = []
    for e in events:
        text = dumped.get(id(e.data))
        if text is None:
            text = dumped[id(e.data)] = json.dumps(e.data)
        data.append(text)
    return await conn.fetchval(
        QUERIES.append_stream_events,
        list(counts),
        list(counts.values()),
        [e.stream for e in events],
        positions(events),
        [e.event_id for e in events],
        [e.type for e in events],
        [e.occurred_at for e in events],
        data,
        notify_payloads(counts),
    )


class Store:
    """Reads and maintenance of the replay window, through named queries."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def events_after(self, stream: str, seq: int, limit: int = PAGE) -> list[asyncpg.Record]:
        """A stream's events after `seq`, oldest first (`seq`, `type`, `occurred_at`, `data` as JSON text)."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(QUERIES.events_after, stream, seq, limit)

    async def events_after_many(self, streams: list[str], seqs: list[int], limit: int = PAGE) -> list[asyncpg.Record]:
        """Each stream's events after its sequence in one statement (`stream` added), oldest first per stream."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(QUERIES.events_after_many, streams, seqs, limit)

    async def operator_queues(self, operator_id: str) -> list[str]:
        """The queues whose depth an operator's stream shows (its profile's, or `default` alone)."""
        async with self.pool.acquire() as conn:
            joined = await conn.fetchval(QUERIES.operator_queues, operator_id)
        return operator_queues(None if joined is None else [q for q in joined.split(",") if q])

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
