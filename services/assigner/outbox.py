"""The transactional outbox relay: publishes lifecycle facts to chat.lifecycle in commit order.

One relay publishes at a time (an advisory lock), in id order, keyed by chat, through the FastStream
publisher of `chat.lifecycle` declared on the process's broker (its idempotent producer, replaced
when stuck: shared.kafka.producer); each record carries the `type` and CloudEvents headers. Rows
are deleted only after Kafka acknowledged them, in the same transaction that read
them. A crash after the ack and before the delete republishes the same event ids, which every
consumer skips. A fact whose transaction rolled back was never visible to the relay.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.assigner import metrics
from shared import faults
from shared.db import Queries
from shared.events import cloudevent_headers
from shared.kafka.publishers import enqueue
from shared.retry import Backoff
from shared.settings import Settings

log = logging.getLogger("switchboard.assigner.outbox")

SOURCE = "assigner"  # the CloudEvents source of every lifecycle fact


class OutboxRelay:
    """Moves committed lifecycle facts from `assigner.outbox` to Kafka."""

    def __init__(self, pool: asyncpg.Pool, publisher: DefaultPublisher, settings: Settings, queries: Queries):
        self.pool = pool
        self.publisher = publisher  # chat.lifecycle, declared on the broker in the wiring
        self.settings = settings
        self.q = queries
        # Set when this process committed facts (`wake`): the relay starts its next round at once
        # instead of at the end of its poll interval (which still finds the API process's facts).
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Facts were just committed in this process: publish them without waiting for the next poll."""
        self._woken.set()

    async def publish_once(self) -> int:
        """Publish one batch; returns how many facts left (0 when idle or another relay holds the lock)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(self.q.try_lock_outbox):
                return 0
            rows = await conn.fetch(self.q.outbox_batch, self.settings.outbox_batch_size)
            if not rows:
                return 0
            # Each call only enqueues (in id order) and returns the ack future: a round is one
            # pipelined batch, acknowledged as a whole below.
            futures = [
                await enqueue(
                    self.publisher,
                    r["envelope"].encode(),
                    key=r["chat_id"].encode(),
                    headers=cloudevent_headers(r["event_id"], r["type"], SOURCE, r["occurred_at"]),
                )
                for r in rows
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self.settings.kafka_send_timeout_s * 2)
            faults.reached("outbox_after_ack")  # a crash test may SIGKILL here: acknowledged, not deleted
            await conn.execute(self.q.outbox_delete, [r["id"] for r in rows])
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

    async def run(self) -> None:
        """Publish until cancelled; back off while Kafka or Postgres is unavailable."""
        backoff = Backoff("outbox relay", base=0.1, cap=5.0)
        while True:
            try:
                sent = await self.publish_once()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed; retrying", extra={"error": repr(exc)})
                await backoff.wait()
                continue
            if sent < self.settings.outbox_batch_size:
                await self._pause()

    async def _pause(self) -> None:
        """Wait for the poll interval, or less if facts were committed meanwhile (then at once)."""
        try:
            await asyncio.wait_for(self._woken.wait(), self.settings.outbox_poll_interval_s)
        except TimeoutError:
            pass
        self._woken.clear()
