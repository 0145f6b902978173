"""Ingest's coalescer over the shared batcher, with an in-memory store and publisher (no Kafka, no Postgres)."""

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from services.ingest import domain
from services.ingest.domain import Claim, MessageIn
from services.ingest.handlers import Coalescer
from shared.errors import ApiError

AT = datetime(2026, 1, 1, tzinfo=UTC)


class MemoryStore:
    """The idempotency table in a dict."""

    def __init__(self):
        self.claims: dict = {}

    async def claim(self, drafts):
        for d in drafts:
            self.claims.setdefault(d.key, Claim(d.key, d.event_id, d.envelope, acked=False))
        return {d.key: self.claims[d.key] for d in drafts}

    async def mark_acked(self, keys):
        first = {k for k in keys if not self.claims[k].acked}
        for k in first:
            c = self.claims[k]
            self.claims[k] = Claim(c.key, c.event_id, c.envelope, acked=True)
        return first


class GatedPublisher:
    """Acks every record once the gate opens; records each round."""

    def __init__(self):
        self.rounds: list[list[str]] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def publish(self, records):
        self.rounds.append([chat for chat, _ in records])
        self.entered.set()
        await self.gate.wait()
        return [None] * len(records)


def draft(chat: str, message_id: str = "m-1"):
    return domain.draft(chat, MessageIn(message_id=message_id, sender="user", text="hi"), uuid.uuid4(), AT)


async def test_stop_lets_the_round_in_flight_answer_its_callers_and_later_messages_get_503():
    publisher = GatedPublisher()
    coalescer = Coalescer(SimpleNamespace(store=MemoryStore(), publisher=publisher))
    coalescer.start()
    in_flight = asyncio.create_task(coalescer.accept(draft("chat-1")))
    await publisher.entered.wait()
    stopping = asyncio.create_task(coalescer.stop())
    await asyncio.sleep(0.05)
    publisher.gate.set()
    await stopping
    answer = await asyncio.wait_for(in_flight, 1)
    assert answer is not None and answer.duplicate is False
    with pytest.raises(ApiError) as refused:
        await coalescer.accept(draft("chat-2"))
    assert refused.value.status == 503


async def test_messages_arriving_during_a_round_go_together_into_the_next_one():
    publisher = GatedPublisher()
    coalescer = Coalescer(SimpleNamespace(store=MemoryStore(), publisher=publisher), max_batch=2)
    coalescer.start()
    first = asyncio.create_task(coalescer.accept(draft("chat-1")))
    await publisher.entered.wait()
    rest = [asyncio.create_task(coalescer.accept(draft(f"chat-{i}"))) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    publisher.gate.set()
    answers = await asyncio.gather(first, *rest)
    assert all(a is not None and not a.duplicate for a in answers)
    assert publisher.rounds == [["chat-1"], ["chat-2", "chat-3"], ["chat-4"]]
    await coalescer.stop()
