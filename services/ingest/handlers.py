"""Ingest's use case: accept messages exactly once per key and answer only after Kafka acknowledged.

Ingest consumes no topic; this is the one thing its entry points (the HTTP API, the benchmark)
call: claim the keys in Postgres, publish what Kafka has not acknowledged, record the acks.
"""

from __future__ import annotations

import time

from services.ingest import domain, metrics
from services.ingest.domain import Accepted, Draft
from services.ingest.publisher import Publisher
from services.ingest.store import Store
from shared.batcher import Batcher
from shared.db import DATABASE_DOWN


class DatabaseUnavailable(Exception):
    """Postgres did not answer; nothing was accepted that the client was not told about."""


async def accept_messages(store: Store, publisher: Publisher, drafts: list[Draft]) -> list[Accepted | None]:
    """One answer per draft, in order: Accepted once Kafka acknowledged its key's event, None if it did not."""
    unique = domain.distinct(drafts)
    try:
        claims = await store.claim(unique)
    except DATABASE_DOWN as exc:
        metrics.rejected("database_unavailable", len(drafts))
        raise DatabaseUnavailable(repr(exc)) from exc
    pending = domain.to_publish(unique, claims)
    started = time.perf_counter()
    errors = await publisher.publish([(c.key.chat_id, c.envelope) for c in pending])  # type: ignore[misc]
    acked = [c.key for c, err in zip(pending, errors) if err is None]
    failed = {c.key for c, err in zip(pending, errors) if err is not None}
    if acked:
        metrics.PUBLISH_LATENCY.observe(time.perf_counter() - started)
    try:
        first = await store.mark_acked(acked)
    except DATABASE_DOWN as exc:
        # Kafka has the records; the client's retry re-publishes them with the same event ids.
        metrics.rejected("database_unavailable", len(drafts))
        raise DatabaseUnavailable(repr(exc)) from exc
    out: list[Accepted | None] = []
    for d, answer in zip(drafts, domain.answers(drafts, claims, first)):
        if d.key in failed:
            metrics.rejected("kafka_unavailable")
            out.append(None)
        else:
            metrics.MESSAGES.labels("duplicate" if answer.duplicate else "accepted", "").inc()
            out.append(answer)
    return out


class Coalescer:
    """Group concurrent single-message requests into one claim → publish → mark round.

    While a round is in flight, arriving messages queue up and go together in the next round, so
    a busy ingest pays two Postgres round trips and one Kafka flush per round rather than per
    message; an idle one starts a round at once (no added wait). One round at a time (one worker
    of the shared batcher), so one chat's messages keep their order.
    """

    def __init__(self, state, max_batch: int = domain.MAX_BATCH):
        # `state` holds `store` and `publisher`, read each round (tests swap the publisher).
        self.state = state
        self._batcher: Batcher[Draft, Accepted | None] = Batcher(self._round, max_batch=max_batch, stopping="ingest")

    @property
    def max_batch(self) -> int:
        """The most messages one round takes."""
        return self._batcher.max_batch

    def start(self) -> None:
        """Start the round loop."""
        self._batcher.start()

    async def stop(self) -> None:
        """Finish the queued rounds, then stop (later messages are answered 503)."""
        await self._batcher.stop()

    async def accept(self, draft: Draft) -> Accepted | None:
        """Accept one message in the next round; same answers and errors as `accept_messages`."""
        return await self._batcher.submit(draft)

    async def _round(self, drafts: list[Draft]) -> list[Accepted | None]:
        return await accept_messages(self.state.store, self.state.publisher, drafts)
