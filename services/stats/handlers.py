"""The chat.lifecycle subscriber: count each partition batch in the consumer's transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter, Histogram

from services.stats import domain, store
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
