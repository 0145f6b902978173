"""The chat.lifecycle subscriber: append each batch's stream events to the replay window, exactly once."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.delivery import domain, store, webhooks
from shared.events import utcnow
from shared.kafka import ApplyBatch, Incoming
from shared.settings import Settings


def make_apply(settings: Settings) -> ApplyBatch:
    """The BatchConsumer callback: read the batch's chat state once, plan, store the events and the state, notify."""

    async def on_lifecycle(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> int:
        """Apply one poll of chat.lifecycle facts (already deduplicated by event id, in partition order).

        A handful of statements per poll whatever its size: one read (holders, waiting queues, the
        types webhooks want), one write of the chats' state and queue depths, one of the stream
        events with their wake-ups, and the webhook deliveries only when an endpoint wants a fact.
        """
        facts = domain.recent((item.event for item in batch), utcnow(), settings.delivery_retention_s)
        before = await store.batch_state(conn, domain.chats_of(facts), domain.queue_chats_of(facts))
        planned = domain.plan(facts, before.holders)
        moves = domain.queue_moves(facts, before.waiting)
        await store.save_chat_state(conn, planned.holders, moves)
        await webhooks.enqueue(conn, domain.webhook_facts(facts, before.webhook_types))
        return await store.append(conn, planned.events)

    return on_lifecycle
