"""The system's FastStream publishers: one declaration per topic, on the process's broker.

A process declares the publishers of the topics it produces in its wiring (`declare`), before the
broker starts, so its AsyncAPI document names each topic it writes with its payload schema: the
envelope union of that topic in shared.events (the dead-letter topic carries the poison record's
value unchanged, so its payload is any bytes). Declaring a topic twice on one broker returns the
first publisher (every consumer group of a process shares the dead-letter publisher).

Each record carries the `type` and CloudEvents binary-mode headers (`shared.events.cloudevent_headers`);
the key is the chat id, so one chat's records keep their order. Callers publish with `enqueue`,
which enqueues the record on the publisher's producer (the broker's `ResilientProducer`) and
returns aiokafka's acknowledgement future, so a round's records are pipelined and its acks awaited
together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.usecase import DefaultPublisher

from shared.events import PAYLOADS, TOPIC_DLQ, TOPIC_INBOUND, TOPIC_LIFECYCLE, TOPIC_TIMEOUTS
from shared.kafka.producer import ResilientProducer
from shared.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """What the AsyncAPI document says of a produced topic."""

    schema: Any
    description: str


PRODUCED: dict[str, TopicSpec] = {
    TOPIC_INBOUND: TopicSpec(
        PAYLOADS[TOPIC_INBOUND],
        "User and operator messages accepted by ingest; key = chat id (one chat's messages in order).",
    ),
    TOPIC_TIMEOUTS: TopicSpec(
        PAYLOADS[TOPIC_TIMEOUTS],
        "`assignment_idle` when an assignment's operator stayed silent past the idle deadline; key = chat id.",
    ),
    TOPIC_LIFECYCLE: TopicSpec(
        PAYLOADS[TOPIC_LIFECYCLE],
        "Lifecycle facts from the assigner's outbox, in commit order per chat; key = chat id.",
    ),
    TOPIC_DLQ: TopicSpec(
        bytes,
        "Records no consumer can apply: the original value and key unchanged, with `dlq.reason`, "
        "`dlq.source_topic`, `dlq.source_partition`, `dlq.source_offset` and `dlq.consumer_group` headers.",
    ),
}


def declare(broker: KafkaBroker, settings: Settings, topic: str) -> DefaultPublisher:
    """The publisher of logical `topic` (settings add the prefix) on `broker`, declared once."""
    name = settings.topic(topic)
    for publisher in broker.publishers:
        if isinstance(publisher, DefaultPublisher) and publisher.topic == name:
            return publisher
    spec = PRODUCED[topic]
    return broker.publisher(name, schema=spec.schema, title=f"{name}:publish", description=spec.description)


async def enqueue(publisher: DefaultPublisher, value: bytes, *, key: bytes, headers: dict[str, str]) -> asyncio.Future:
    """Enqueue one record and return its acknowledgement future (records are sent in call order).

    The record goes to the publisher's producer, FastStream's producer slot. When that is the
    broker's `ResilientProducer` and the broker has no publish middleware (`make_broker` adds
    none), it is handed over directly (`ResilientProducer.send`): FastStream's `publish` would build
    a command object per record and add nothing to it (measured 34–46 against 25 us of CPU per
    record, docs/performance.md). FastStream's in-memory `TestKafkaBroker` swaps the slot: there the
    record goes through `publish`, which delivers during the call and returns no future; an
    already acknowledged one stands for it.
    """
    config = getattr(publisher, "_outer_config", None)  # FastStream's publisher config: its producer slot
    producer = getattr(config, "producer", None)
    if isinstance(producer, ResilientProducer) and not getattr(config, "broker_middlewares", ()):
        return await producer.send(publisher.topic, value, key=key, headers=headers)
    # The event id (CloudEvents' id) as FastStream's correlation id, so it draws no uuid4 per record.
    sent = await publisher.publish(
        value, key=key, headers=headers, correlation_id=headers.get("ce_id"), no_confirm=True
    )
    if sent is None:
        sent = asyncio.get_running_loop().create_future()
        sent.set_result(None)
    return sent
