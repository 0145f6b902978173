"""Event-id tracking: which events a consumer has applied, claimed in the effect's own transaction.

Every consumer (assigner, idle monitor, stats, and `switchboard stats rebuild` replaying into its
shadow schema) records the ids of the events it applies in its schema's `processed_events`, in
the transaction that applies them: an event re-read after a crash, a rebalance or a retried
batch finds its id there and is skipped. Dead-letter markers (shared.kafka.deadletter) are
claimed the same way. Ids past the dedup window are pruned by the retention loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import asyncpg

from shared import db
from shared.kafka.decoding import Incoming
from shared.retention import PruneJob

# The schemas that hold a processed_events table. Table names cannot be $-parameters, so the one
# SQL text of shared/sql/tracking.sql names its schema `__schema__`, replaced here, once, by each of
# these fixed names: no input ever reaches a statement's text, and each schema runs one fixed text.
SCHEMAS = ("assigner", "delivery", "idle_monitor", "stats", "stats_rebuild")

_QUERIES = db.Queries(Path(__file__).parent / "sql" / "tracking.sql")
_SQL = {
    schema: {name: getattr(_QUERIES, name).replace("__schema__", schema) for name in _QUERIES.names()}
    for schema in SCHEMAS
}


class EventIds:
    """One schema's applied event ids: claim them in the applying transaction, prune old ones."""

    def __init__(self, schema: str):
        if schema not in _SQL:
            raise ValueError(f"no processed_events table is known in schema {schema!r} (known: {', '.join(SCHEMAS)})")
        self.schema = schema
        self.claim_sql = _SQL[schema]["claim_event_ids"]
        self.prune_sql = _SQL[schema]["prune_processed_events"]

    async def claim(self, conn: asyncpg.Connection, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Record the ids as applied (in the caller's transaction); returns those not seen before."""
        return set(await conn.fetchval(self.claim_sql, list(ids)) or ())

    async def claim_new(
        self, conn: asyncpg.Connection, items: Sequence[Incoming], markers: Sequence[uuid.UUID] = ()
    ) -> tuple[list[Incoming], set[uuid.UUID]]:
        """Claim the events' ids and the markers; returns the events to apply (each new id once) and the new markers."""
        if not items and not markers:
            return [], set()
        fresh = await self.claim(conn, [i.event.event_id for i in items] + list(markers))
        new: list[Incoming] = []
        seen: set[uuid.UUID] = set()
        for item in items:
            event_id = item.event.event_id
            if event_id in fresh and event_id not in seen:
                seen.add(event_id)
                new.append(item)
        return new, {m for m in markers if m in fresh}

    def prune_job(self, keep: timedelta) -> PruneJob:
        """The retention job that forgets ids applied longer ago than `keep` (the dedup window)."""
        return PruneJob(f"{self.schema}.processed_events", self.prune_sql, keep)
