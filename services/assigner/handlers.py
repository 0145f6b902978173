"""Kafka side of the assigner: apply inbound messages and idle timeouts; export queue gauges."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg

from services.assigner import metrics
from services.assigner.outbox import OutboxRelay
from services.assigner.repository import Changes
from services.assigner.usecases import Assigner, count_outcomes
from shared.kafka import Incoming

log = logging.getLogger("switchboard.assigner")
GAUGE_INTERVAL_S = 5.0
# The gauges count waiting chats (per state, per queue): reads that grow with the queue, 1.5 s of a
# core at a million waiting chats. They may take at most this share of the time.
GAUGE_BUDGET = 0.05


def gauge_pause(spent_s: float, interval_s: float = GAUGE_INTERVAL_S, budget: float = GAUGE_BUDGET) -> float:
    """Seconds until the next refresh: the interval, or longer when a refresh took long."""
    return max(interval_s, spent_s / budget - spent_s)


def make_apply(assigner: Assigner):
    """The batch applier for BatchConsumer: one partition batch of chat.inbound or chat.timeouts."""

    async def on_inbound_or_timeouts(conn: asyncpg.Connection, batch: list[Incoming]) -> Changes:
        return await assigner.apply_events(conn, [item.event for item in batch])

    return on_inbound_or_timeouts


def after_commit(changes: Changes, relays: Sequence[OutboxRelay] = ()) -> None:
    """Once a batch's transaction committed: count its assignment outcomes, wake the relay for its facts."""
    count_outcomes(changes)
    if changes.facts:
        for relay in relays:
            relay.wake()


async def export_gauges(assigner: Assigner) -> None:
    """Refresh chats-per-state, per-queue, operators-per-status, active-assignment and outbox gauges periodically."""
    shown: set[str] = set()
    while True:
        started = time.monotonic()
        try:
            summary = await assigner.queue_summary()
            for state, n in summary["chats_by_state"].items():
                metrics.CHATS.labels(state).set(n)
            metrics.ASSIGNMENTS_ACTIVE.set(summary["active_assignments"])
            metrics.OUTBOX_BACKLOG.set(await assigner.outbox_backlog())
            queues, statuses = await assigner.routing_gauges()
            for gone in shown - set(queues):  # a deleted queue's series go away
                metrics.QUEUE_WAITING.remove(gone)
                metrics.OLDEST_WAITING.remove(gone)
            shown = set(queues)
            for queue_id, (waiting, age_s) in queues.items():
                metrics.QUEUE_WAITING.labels(queue_id).set(waiting)
                metrics.OLDEST_WAITING.labels(queue_id).set(age_s)
            for status in ("available", "away", "offline"):
                metrics.OPERATORS.labels(status).set(statuses.get(status, 0))
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.warning("queue gauges not refreshed", extra={"error": repr(exc)})
        await asyncio.sleep(gauge_pause(time.monotonic() - started))
