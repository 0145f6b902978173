"""The idle monitor's entrypoints: the `chat.lifecycle` subscriber and the ticker that fires deadlines.

Metrics (see docs/metrics.md):
- `switchboard_idle_timers_pending` (gauge): deadlines armed now, read from Postgres, so every
  instance reports the same figure (aggregate with `max`, not `sum`).
- `switchboard_idle_timers_armed_total`, `switchboard_idle_timers_disarmed_total`,
  `switchboard_idle_timers_fired_total` (counters).
- `switchboard_idle_fire_lateness_seconds` (histogram): fire time minus deadline.
- `switchboard_idle_fire_failures_total` (counter): ticker rounds that failed (Kafka did not
  acknowledge every event, or Postgres was unreachable); their deadlines stay armed and fire
  on a later round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from faststream.kafka.publisher.usecase import DefaultPublisher
from prometheus_client import Counter, Gauge, Histogram

from services.idle_monitor import domain
from services.idle_monitor.store import Applied, Store
from shared.events import encode, event_headers, utcnow
from shared.kafka.consumer import ApplyBatch
from shared.kafka.decoding import Incoming
from shared.kafka.publishers import enqueue
from shared.retry import Backoff
from shared.settings import Settings

log = logging.getLogger("switchboard.idle_monitor")

FIRE_BATCH_SIZE = 500
MAX_BACKOFF_S = 5.0
GAUGE_REFRESH_S = 1.0
# A round may wait up to twice the Kafka send timeout; beyond this the ticker counts as stalled.
STALLED_AFTER_S = 30.0


# Named apart from the counter `..._armed_total`: a gauge and a counter may not share a stem.
TIMERS_PENDING = Gauge(
    "switchboard_idle_timers_pending", "Idle deadlines armed now (the same figure on every instance)."
)
TIMERS_ARMED_TOTAL = Counter("switchboard_idle_timers_armed_total", "Idle deadlines armed.")
TIMERS_DISARMED_TOTAL = Counter(
    "switchboard_idle_timers_disarmed_total", "Idle deadlines disarmed because their assignment ended."
)
TIMERS_FIRED_TOTAL = Counter(
    "switchboard_idle_timers_fired_total", "Idle deadlines fired (assignment_idle acknowledged by Kafka)."
)
FIRE_LATENESS = Histogram(
    "switchboard_idle_fire_lateness_seconds",
    "How long after its deadline a timer fired.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300),
)
FIRE_FAILURES = Counter(
    "switchboard_idle_fire_failures_total",
    "Idle ticker rounds that failed (Kafka did not acknowledge every event, or Postgres failed); retried.",
)


# The lifecycle facts that arm and disarm deadlines; the others are skipped by their type header.
WANTED_TYPES = frozenset({"chat_assigned", "assignment_ended"})


def make_apply(store: Store, settings: Settings) -> ApplyBatch:
    """The batch handler for `chat.lifecycle`: arm on `chat_assigned`, disarm on `assignment_ended`."""

    async def on_lifecycle(conn, batch: list[Incoming]) -> Applied:
        """Apply one partition batch of lifecycle facts to the timers (caller's transaction)."""
        changes = domain.plan_timer_changes((i.event for i in batch), settings.idle_timeout_s)
        if changes.empty:
            return Applied(armed=0, disarmed=0)
        return await store.apply_changes(conn, changes)

    return on_lifecycle


def after_commit(applied: Applied | None) -> None:
    """Count armed and disarmed deadlines once their transaction committed (a retried batch counts once)."""
    if applied is not None:
        TIMERS_ARMED_TOTAL.inc(applied.armed)
        TIMERS_DISARMED_TOTAL.inc(applied.disarmed)


class FireFailed(RuntimeError):
    """Kafka did not acknowledge some `assignment_idle` events; their deadlines stay armed."""


class Ticker:
    """Fires due deadlines every `idle_check_interval_s`; several instances may run side by side."""

    def __init__(
        self,
        store: Store,
        publisher: DefaultPublisher,
        settings: Settings,
        *,
        batch_size: int = FIRE_BATCH_SIZE,
        clock: Callable = utcnow,
    ):
        self.store = store
        self.publisher = publisher  # chat.timeouts, declared on the broker in the wiring
        self.settings = settings
        self.batch_size = batch_size
        self.clock = clock
        self.last_round = time.monotonic()

    @property
    def healthy(self) -> bool:
        """True while rounds keep succeeding (the last one ended recently)."""
        limit = max(STALLED_AFTER_S, 2 * self.settings.kafka_send_timeout_s + 10 * self.settings.idle_check_interval_s)
        return time.monotonic() - self.last_round < limit

    async def fire_due(self) -> int:
        """Publish `assignment_idle` for each due deadline; delete those Kafka acknowledged; returns that count.

        The claimed rows stay locked until Kafka answered, so no other instance fires them
        meanwhile; a crash between the ack and the commit fires again with the same event id.
        """
        async with self.store.pool.acquire() as conn:
            async with conn.transaction():
                due = await self.store.claim_due(conn, self.clock(), self.batch_size)
                if not due:
                    return 0
                facts = [domain.idle_fact(d) for d in due]
                pending = [  # enqueued in order; the acks are awaited together below
                    await enqueue(self.publisher, encode(f), key=f.chat_id.encode(), headers=event_headers(f))
                    for f in facts
                ]
                results = await asyncio.wait_for(
                    asyncio.gather(*pending, return_exceptions=True), self.settings.kafka_send_timeout_s * 2
                )
                fired_at = utcnow()
                acked = [d for d, r in zip(due, results) if not isinstance(r, BaseException)]
                if acked:
                    await self.store.delete_fired(conn, [d.assignment_id for d in acked])
        TIMERS_FIRED_TOTAL.inc(len(acked))
        for d in acked:
            FIRE_LATENESS.observe(domain.lateness_s(d, fired_at))
        if len(acked) < len(due):
            errors = {repr(r) for r in results if isinstance(r, BaseException)}
            raise FireFailed(
                f"{len(due) - len(acked)} of {len(due)} assignment_idle events not acknowledged: "
                + "; ".join(sorted(errors))[:500]
            )
        return len(acked)

    async def refresh_gauge(self) -> None:
        """Count the armed deadlines into `switchboard_idle_timers_pending`."""
        TIMERS_PENDING.set(await self.store.count_armed())

    async def run(self) -> None:
        """Fire, refresh the gauge; sleep when idle; back off (shared policy) when Kafka or Postgres fail."""
        interval = self.settings.idle_check_interval_s
        backoff = Backoff("idle ticker", base=interval, cap=max(interval, MAX_BACKOFF_S))
        next_gauge = 0.0
        while True:
            try:
                fired = await self.fire_due()
                now = time.monotonic()
                if now >= next_gauge:
                    await self.refresh_gauge()
                    next_gauge = now + max(interval, GAUGE_REFRESH_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                FIRE_FAILURES.inc()
                log.warning(
                    "idle ticker round failed, retrying",
                    extra={"error": repr(exc)[:500], "attempt": backoff.attempt + 1},
                )
                await backoff.wait()
                continue
            backoff.reset()
            self.last_round = time.monotonic()
            if fired < self.batch_size:
                await asyncio.sleep(interval)
