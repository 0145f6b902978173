"""Queue depth on the operator stream against real Kafka and Postgres: facts in, depth events out, each fact once."""

from __future__ import annotations

import time
import uuid

from shared.events import (
    TOPIC_LIFECYCLE,
    ChatQueued,
    ChatQueuedPayload,
    ChatRouted,
    ChatRoutedPayload,
    new_event_id,
    utcnow,
)
from tests.e2e.servers import free_port, serving
from tests.harness import Producer, eventually
from tests.integration.test_delivery_operator_stream import operator_stream
from tests.integration.test_delivery_stream import assigned, completed


def queued(chat_id: str, queue: str = "default"):
    """A chat_queued fact as the assigner's relay publishes it."""
    at = utcnow()
    return ChatQueued(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="test",
        payload=ChatQueuedPayload(reason="new", waiting_since=at, queued_at=at, queue_id=queue),
    )


def routed(chat_id: str, queue: str):
    at = utcnow()
    return ChatRouted(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="test",
        payload=ChatRoutedPayload(queue_id=queue, priority=0, skills=[], by="admin", routed_at=at),
    )


class Depths:
    """The queue_depth events of an operator stream, with when each came."""

    def __init__(self, sse):
        self.sse = sse
        self.seen: list[tuple[float, str, int]] = []

    async def until(self, waiting: int, queue: str = "default", timeout: float = 20.0) -> None:
        """Read until the stream says `queue` has `waiting` chats."""
        deadline = time.monotonic() + timeout
        while not self.seen or self.seen[-1][1:] != (queue, waiting):
            await self.read(deadline - time.monotonic())

    async def read(self, timeout: float) -> None:
        event = await self.sse.next(timeout=max(0.1, timeout))
        assert event["event"] == "queue_depth", event
        assert "id" not in event, "a depth event took a place in the stream's replay"
        self.seen.append((time.monotonic(), event["data"]["queue_id"], event["data"]["waiting"]))

    def values(self) -> list[int]:
        return [n for _, _, n in self.seen]


async def test_the_operator_stream_shows_its_queues_depth_counting_each_fact_once(env):
    settings = env.with_settings(delivery_heartbeat_s=1)
    a, b, c = (f"chat-{uuid.uuid4().hex[:6]}" for _ in range(3))
    first_a = queued(a)
    async with serving("delivery", settings, free_port()) as url, Producer(settings) as kafka:
        conn = await env.connect()
        try:
            async with operator_stream(url, "op-1", ignore=()) as sse:
                assert sse.response.status_code == 200
                depths = Depths(sse)
                await depths.read(20)  # the current depth, once, when the stream opens
                assert depths.seen[0][1:] == ("default", 0)

                # a queued twice (a redelivered record, the same event id): counted once.
                for fact in (first_a, queued(b), first_a, queued(c, "sales")):
                    await kafka.send(TOPIC_LIFECYCLE, fact)
                await depths.until(2)
                await kafka.send(TOPIC_LIFECYCLE, routed(b, "sales"))  # moves a waiting chat out of default
                await depths.until(1)
                await kafka.send(TOPIC_LIFECYCLE, assigned(a, "op-9"))  # leaves the queue (op-1 sees only depth)
                await depths.until(0)
                await kafka.send(TOPIC_LIFECYCLE, first_a)  # redelivered once more, after it left
                last = routed(a, "default")  # a is not waiting: it stays out
                await kafka.send(TOPIC_LIFECYCLE, last)
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT count(*) FROM delivery.processed_events WHERE event_id = $1", last.event_id
                    )
                )
                assert await sse.quiet(2.5) == [], "an ignored or repeated fact changed the depth"
                assert max(depths.values()) <= 2, depths.seen
                assert all(q == "default" for _, q, _ in depths.seen), "a queue the operator is not in was shown"
                gaps = [t2 - t1 for (t1, _, _), (t2, _, _) in zip(depths.seen, depths.seen[1:], strict=False)]
                assert all(g >= 0.5 for g in gaps), (
                    f"more than one depth event a second: {depths.seen}"
                )  # 1 s, less jitter

            rows = await conn.fetch("SELECT queue_id, waiting FROM delivery.queue_depths ORDER BY queue_id")
            assert [(r["queue_id"], r["waiting"]) for r in rows] == [("default", 0), ("sales", 2)]
            waiting = await conn.fetch("SELECT chat_id, queue_id FROM delivery.waiting_chats ORDER BY chat_id")
            assert sorted((r["chat_id"], r["queue_id"]) for r in waiting) == sorted([(b, "sales"), (c, "sales")])

            # A stream opened later starts with the current depth; a completed chat leaves its queue.
            await kafka.send(TOPIC_LIFECYCLE, queued(a))
            async with operator_stream(url, "op-2", ignore=()) as later:
                depths = Depths(later)
                await depths.until(1)
                await kafka.send(TOPIC_LIFECYCLE, completed(a))
                await depths.until(0)
        finally:
            await conn.close()
