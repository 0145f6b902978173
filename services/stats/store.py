"""Postgres access for stats: counter upserts per batch and the read side of the API."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import asyncpg

from services.stats.domain import (
    CHAT_COUNTERS,
    OPERATOR_COUNTERS,
    QUEUE_COUNTERS,
    Settled,
    Tally,
    settle,
)
from shared import db
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = db.Queries(Path(__file__).parent / "sql" / "queries.sql")


async def create_pool(
    settings: Settings, schema: str, *, app: str = "stats", max_size: int | None = None
) -> asyncpg.Pool:
    """A pool whose sessions resolve the stats tables in `schema` (live `stats` or a rebuild shadow)."""
    return await db.create_pool(
        settings.database_url,
        min_size=1,
        max_size=max_size or settings.db_pool_max,
        app=app,
        server_settings={"search_path": schema},
    )


async def apply_tally(conn: asyncpg.Connection, t: Tally) -> Settled:
    """Add one batch's counts in the caller's transaction, set-based; returns what was added."""
    new_day_pairs: dict[tuple[str, date], int] = {}
    new_pairs: dict[str, int] = {}
    if t.touched:
        touched = sorted(t.touched)
        rows = await conn.fetch(
            QUERIES.record_chats_handled, [r[0] for r in touched], [r[1] for r in touched], [r[2] for r in touched]
        )
        for row in rows:
            if row["day"] is None:
                new_pairs[row["operator_id"]] = row["n"]
            else:
                new_day_pairs[(row["operator_id"], row["day"])] = row["n"]
    settled = settle(t, new_day_pairs, new_pairs)
    if settled.operator_days:
        keys = list(settled.operator_days)
        await conn.execute(
            QUERIES.add_operator_days,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *_columns(settled.operator_days, OPERATOR_COUNTERS),
        )
    if settled.operator_totals:
        await conn.execute(
            QUERIES.add_operator_totals,
            list(settled.operator_totals),
            *_columns(settled.operator_totals, OPERATOR_COUNTERS),
        )
    if settled.chats:
        await conn.execute(QUERIES.add_chats, list(settled.chats), *_columns(settled.chats, CHAT_COUNTERS))
    if settled.queue_days:
        keys = list(settled.queue_days)
        await conn.execute(
            QUERIES.add_queue_days,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *_columns(settled.queue_days, QUEUE_COUNTERS),
        )
    return settled


def retention_jobs(settings: Settings) -> list[PruneJob]:
    """What stats prunes: applied event ids past the dedup window (it stores no message text)."""
    return [EventIds("stats").prune_job(timedelta(seconds=settings.dedup_window_s))]


def _columns(rows: dict, names: tuple[str, ...]) -> list[list[int]]:
    return [[values[name] for values in rows.values()] for name in names]


def zero_operator(operator_id: str) -> dict:
    """The figures of an operator stats has never seen."""
    return {"operator_id": operator_id, **{name: 0 for name in OPERATOR_COUNTERS}}


def zero_queue(queue_id: str, day: date) -> dict:
    """The figures of a queue with nothing counted on `day` (or one stats has never seen)."""
    return {"queue_id": queue_id, "day": day, **{name: 0 for name in QUEUE_COUNTERS}}


class Store:
    """Reads for the HTTP API, against a pool made by `create_pool`."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def operator(self, operator_id: str, day: date | None) -> dict:
        """One operator's figures on a day, or all time when `day` is None."""
        async with self.pool.acquire() as conn:
            if day is None:
                row = await conn.fetchrow(QUERIES.operator_total, operator_id)
            else:
                row = await conn.fetchrow(QUERIES.operator_day, operator_id, day)
        return dict(row) if row else zero_operator(operator_id)

    async def operators(self, day: date | None, limit: int, after: str | None = None) -> tuple[list[dict], str | None]:
        """One page of operators' figures (ids after `after`) on a day, or all time when `day` is None.

        Returns the rows and the operator id to resume after (None on the last page).
        """
        async with self.pool.acquire() as conn:
            if day is None:
                rows = await conn.fetch(QUERIES.operators_page_all_time, after, limit + 1)
            else:
                rows = await conn.fetch(QUERIES.operators_page_on_day, day, after, limit + 1)
        page = [dict(r) for r in rows[:limit]]
        return page, (page[-1]["operator_id"] if len(rows) > limit else None)

    async def queue(self, queue_id: str, day: date) -> dict:
        """One queue's figures on a UTC day (zeros for a queue with none that day)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(QUERIES.queue_day, queue_id, day)
        return dict(row) if row else zero_queue(queue_id, day)

    async def queues(self, day: date, limit: int, after: str | None = None) -> tuple[list[dict], str | None]:
        """One page of the queues with figures on `day` (ids after `after`); the id to resume after, or None."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(QUERIES.queues_page_on_day, day, after, limit + 1)
        page = [dict(r) for r in rows[:limit]]
        return page, (page[-1]["queue_id"] if len(rows) > limit else None)

    async def queue_sla(self, day: date) -> list[tuple[str, int, int]]:
        """(queue, first assignments, SLA met) of every queue with figures on `day`."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(QUERIES.queue_sla_on_day, day)
        return [(r["queue_id"], r["first_wait_count"], r["sla_met"]) for r in rows]

    async def chat(self, chat_id: str) -> dict:
        """One chat's figures (zeros for a chat stats has not seen)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(QUERIES.chat, chat_id)
        return dict(row) if row else {"chat_id": chat_id, **{name: 0 for name in CHAT_COUNTERS}}


async def figures(conn: asyncpg.Connection) -> dict[str, dict[tuple, dict]]:
    """Every stored figure, keyed for comparison: operator days, operator totals, chats, queue days."""
    days = await conn.fetch(QUERIES.all_operator_days)
    totals = await conn.fetch(QUERIES.operators_all_time)
    chats = await conn.fetch(QUERIES.all_chats)
    queue_days = await conn.fetch(QUERIES.all_queue_days)
    return {
        "operator_day": {(r["operator_id"], r["day"]): dict(r) for r in days},
        "operator_total": {(r["operator_id"],): dict(r) for r in totals},
        "chat": {(r["chat_id"],): dict(r) for r in chats},
        "queue_day": {(r["queue_id"], r["day"]): dict(r) for r in queue_days},
    }
