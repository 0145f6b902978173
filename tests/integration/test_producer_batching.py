"""A round of records is pipelined: enqueueing it never waits for Kafka, on the real broker.

aiokafka keeps at most one batch per partition and makes `send` wait until a full one is drained.
At its default size (16 KiB) the outbox relay waited for a produce round trip every ~16 records of
a partition and fell behind at load (docs/performance.md, eighth session). The system's producer
options (`shared.kafka.producer.producer_options`) size the batch for a whole round.
"""

from __future__ import annotations

import asyncio
import uuid

from shared.events import TOPIC_LIFECYCLE, cloudevent_headers, utcnow
from shared.kafka.broker import make_broker
from shared.kafka.publishers import declare, enqueue
from tests.harness import read_topic

ROUND = 300  # records of one chat (so one partition), ~1 KB each: ~20 default-sized batches


async def test_a_round_for_one_partition_is_enqueued_without_waiting_and_arrives_in_order(env):
    broker = make_broker(env.settings, "assigner")
    lifecycle = declare(broker, env.settings, TOPIC_LIFECYCLE)
    await broker.connect()
    try:

        async def send(i: int) -> asyncio.Future:
            headers = cloudevent_headers(uuid.uuid4(), "message_recorded", "assigner", utcnow().isoformat())
            return await enqueue(lifecycle, f"{i:04d}".encode() + b"x" * 1000, key=b"chat-round", headers=headers)

        await (await send(-1))  # the topic's metadata is known from here on: no send needs to look it up
        # A callback scheduled now runs at the event loop's next turn: only if some send waited.
        waited: list[int] = []
        futures: list[asyncio.Future] = []
        asyncio.get_running_loop().call_soon(lambda: waited.append(len(futures)))
        for i in range(ROUND):
            futures.append(await send(i))
        assert waited == [], f"a send waited for Kafka after {waited[0]} records of the round"
        await asyncio.wait_for(asyncio.gather(*futures), 30)
    finally:
        await broker.stop()
    records = await read_topic(env.settings, TOPIC_LIFECYCLE, min_records=ROUND + 1, timeout=20)
    assert [int(r.value[:4]) for r in records] == [-1, *range(ROUND)]
