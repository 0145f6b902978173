"""Postgres access for the idle monitor: armed deadlines, ended-assignment tombstones, applied ids."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from services.idle_monitor.domain import Deadline, TimerChanges
from shared.db import Queries, from_row
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")


@dataclass(frozen=True)
class Applied:
    """How many deadlines a batch armed and disarmed."""

    armed: int
    disarmed: int


class Store:
    """The idle monitor's schema, reached through named queries."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.q = QUERIES

    async def apply_changes(self, conn: asyncpg.Connection, changes: TimerChanges) -> Applied:
        """Disarm, then arm, inside the caller's transaction (so tombstones written here block arming)."""
        disarmed = armed = 0
        if changes.disarm:
            disarmed = await conn.fetchval(
                self.q.disarm_deadlines,
                [e.assignment_id for e in changes.disarm],
                [e.ended_at for e in changes.disarm],
            )
        if changes.arm:
            armed = await conn.fetchval(
                self.q.arm_deadlines,
                [d.assignment_id for d in changes.arm],
                [d.chat_id for d in changes.arm],
                [d.operator_id for d in changes.arm],
                [d.assigned_at for d in changes.arm],
                [d.deadline for d in changes.arm],
            )
        return Applied(armed=armed, disarmed=disarmed)

    async def claim_due(self, conn: asyncpg.Connection, now: datetime, limit: int) -> list[Deadline]:
        """Lock the deadlines due at `now` that no other instance holds (caller's transaction)."""
        return [from_row(Deadline, r) for r in await conn.fetch(self.q.claim_due_deadlines, now, limit)]

    async def delete_fired(self, conn: asyncpg.Connection, assignment_ids: Sequence[uuid.UUID]) -> None:
        """Delete deadlines whose fire Kafka acknowledged (caller's transaction)."""
        await conn.execute(self.q.delete_fired_deadlines, list(assignment_ids))

    async def count_armed(self) -> int:
        """How many deadlines are armed."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(self.q.count_armed_deadlines)

    async def list_armed(self, limit: int) -> list[asyncpg.Record]:
        """Armed deadlines, soonest first."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(self.q.list_armed_deadlines, limit)

    def retention_jobs(self, settings: Settings) -> list[PruneJob]:
        """What the retention loop prunes: tombstones and applied ids past the dedup window.

        Neither can stop anything any more: no record that old can still be redelivered.
        """
        keep = timedelta(seconds=settings.dedup_window_s)
        return [
            PruneJob("idle_monitor.ended_assignments", self.q.prune_ended_assignments, keep),
            EventIds("idle_monitor").prune_job(keep),
        ]
