"""The chat.lifecycle subscriber: append each batch's stream events to the replay window, exactly once."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.delivery import domain, store, webhooks
from shared.events import utcnow
from shared.kafka import ApplyBatch, Incoming
from shared.settings import Settings


def make_apply(settings: Settings) -> ApplyBatch:
    """The BatchConsumer callback: plan the batch's stream events, number them per stream, store them, notify."""

    async def on_lifecycle(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> int:
        """Apply one poll of chat.lifecycle facts (already deduplicated by event id, in partition order)."""
        facts = domain.recent((item.event for item in batch), utcnow(), settings.delivery_retention_s)
        before = await store.holders(conn, domain.chats_of(facts))
        planned = domain.plan(facts, before)
        await store.save_holders(conn, planned.holders)
        await webhooks.enqueue(conn, facts)
        return len(await store.append(conn, planned.events))

    return on_lifecycle
