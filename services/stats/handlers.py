"""The chat.lifecycle subscriber: count each partition batch in the consumer's transaction.

Also the loop that publishes today's per-queue SLA figures as gauges (read from Postgres, so every
stats instance reports the same values: aggregate with `max`, not `sum`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from services.stats import domain, store
from shared.events import utcnow
from shared.kafka.consumer import ApplyBatch
from shared.kafka.decoding import Incoming

# Aggregates only: no chat or operator labels, so the series count stays bounded.
FIRST_RESPONSE_SECONDS = Histogram(
    "switchboard_stats_first_response_seconds",
    "Assignment start to the assigned operator's first message, per assignment.",
    buckets=(1, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
ASSIGNMENTS = Counter("switchboard_stats_assignments_total", "Assignments started, as counted by stats.")
ASSIGNMENTS_ENDED = Counter(
    "switchboard_stats_assignments_ended_total", "Assignments ended, as counted by stats.", ["outcome"]
)
MESSAGES = Counter("switchboard_stats_messages_total", "Messages recorded, as counted by stats.", ["sender"])
# Per queue: at most 500 queues (SPEC §8), so the label stays bounded.
QUEUE_SLA_ATTAINMENT = Gauge(
    "switchboard_queue_sla_attainment_ratio",
    "Today's (UTC) first assignments within the queue's SLA target, over today's first assignments.",
    ["queue"],
)
QUEUE_FIRST_ASSIGNMENTS = Gauge(
    "switchboard_queue_first_assignments_today",
    "First assignments (since a chat was opened or reopened) made from the queue today (UTC).",
    ["queue"],
)
GAUGE_REFRESH_S = 15.0


def make_apply(*, observe: bool = True) -> ApplyBatch:
    """The BatchConsumer callback: tally the fresh events and add them to the counters."""

    async def on_lifecycle(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        """Apply one partition batch of chat.lifecycle facts (already deduplicated by event id)."""
        tally = domain.tally(item.event for item in batch)
        await store.apply_tally(conn, tally)
        if observe:
            _observe(tally)

    return on_lifecycle


def _observe(tally: domain.Tally) -> None:
    # Observed once the batch's statements succeeded; only a failed COMMIT (retried) can
    # count a batch twice here. The tables, not these series, are the exact figures.
    for ms in tally.first_responses_ms:
        FIRST_RESPONSE_SECONDS.observe(ms / 1000)
    if tally.assignments_started:
        ASSIGNMENTS.inc(tally.assignments_started)
    for outcome, n in tally.assignments_ended.items():
        ASSIGNMENTS_ENDED.labels(outcome).inc(n)
    for sender, n in tally.messages.items():
        MESSAGES.labels(sender).inc(n)


class QueueGauges:
    """Sets the per-queue gauges from today's `queue_daily` rows; a queue without rows today has no series."""

    def __init__(
        self, reads: store.Store, *, clock: Callable[[], datetime] = utcnow, interval_s: float = GAUGE_REFRESH_S
    ):
        self.reads = reads
        self.clock = clock
        self.interval_s = interval_s
        self._shown: set[str] = set()

    async def refresh(self) -> None:
        """Read today's figures and set both gauges; drop the series of queues with none today."""
        rows = await self.reads.queue_sla(domain.utc_day(self.clock()))
        shown = set()
        for queue, first, met in rows:
            QUEUE_FIRST_ASSIGNMENTS.labels(queue).set(first)
            ratio = domain.sla_attainment(first, met)
            if ratio is None:  # no first assignment yet: attainment is undefined, not 0 or 1
                _forget(QUEUE_SLA_ATTAINMENT, queue)
            else:
                QUEUE_SLA_ATTAINMENT.labels(queue).set(ratio)
            shown.add(queue)
        for queue in self._shown - shown:  # a new UTC day: yesterday's figures no longer apply
            _forget(QUEUE_FIRST_ASSIGNMENTS, queue)
            _forget(QUEUE_SLA_ATTAINMENT, queue)
        self._shown = shown

    async def run(self) -> None:
        """Refresh every `interval_s` (a failure propagates: the runtime restarts the loop after a backoff)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)


def _forget(gauge: Gauge, queue: str) -> None:
    try:
        gauge.remove(queue)
    except KeyError:
        pass
