"""Bounded storage: a background loop that prunes old rows in small batches (docs/operations.md).

Each service names its own jobs: a named query taking `($1 cutoff timestamptz, $2 batch size)` and
returning one row `(removed, claimed)`: the rows it deleted or blanked (counted in the metric) and
the units of the batch it used (rows for a delete, chats for a text purge), plus how far back its
cutoff lies. A round runs every
job until a batch comes back short (or `MAX_BATCHES_PER_ROUND` batches ran), each batch its own
short transaction, so a backlog drains over a few rounds without ever holding a long lock.

Metric: `switchboard_retention_pruned_rows_total{table}` (counter), rows each job removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter

from shared.events import utcnow

log = logging.getLogger("switchboard.retention")

MAX_BATCHES_PER_ROUND = 100

PRUNED_ROWS = Counter(
    "switchboard_retention_pruned_rows_total",
    "Rows removed by the retention loop: applied event ids and idempotency keys past the dedup window, "
    "message texts purged.",
    ["table"],
)


@dataclass(frozen=True)
class PruneJob:
    """One table's pruning: its named statement and how old a row must be to go."""

    table: str
    sql: str
    keep: timedelta
    batch_divisor: int = 1  # a job whose unit is big (a chat and all its messages) takes fewer per batch


class Pruner:
    """Runs a service's prune jobs every `interval_s` (several instances may run side by side)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        jobs: list[PruneJob],
        *,
        batch_size: int,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.pool = pool
        self.jobs = jobs
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.clock = clock

    async def prune_once(self) -> dict[str, int]:
        """One round: each job in bounded batches until it runs dry; returns rows removed per table."""
        removed: dict[str, int] = {}
        for job in self.jobs:
            cutoff = self.clock() - job.keep
            batch = max(1, self.batch_size // job.batch_divisor)
            total = 0
            for _ in range(MAX_BATCHES_PER_ROUND):
                async with self.pool.acquire() as conn:
                    n, claimed = await conn.fetchrow(job.sql, cutoff, batch)
                total += n
                PRUNED_ROWS.labels(job.table).inc(n)
                if claimed < batch:
                    break
            removed[job.table] = total
        return removed

    async def run(self) -> None:
        """Prune every `interval_s` until cancelled; a failed round is logged and tried again next time."""
        while True:
            try:
                removed = await self.prune_once()
                if any(removed.values()):
                    log.info("retention round", extra={"removed": removed})
            except asyncio.CancelledError:
                raise
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                log.warning("retention round failed; next round retries", extra={"error": repr(exc)[:500]})
            await asyncio.sleep(self.interval_s)
