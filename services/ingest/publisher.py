"""Kafka side of ingest: publish records keyed by chat id and wait, bounded, for `acks=all`.

Records go through the FastStream publisher of `chat.inbound` declared on the process's broker;
its producer is the broker's shared.kafka.ResilientProducer (replaced when aiokafka cannot recover
by itself). What is ingest's own is the round: every record of a round enqueued in order, its acks
awaited up to one send timeout, and the round's outcome (timeouts included) fed to the
replacement clock. Each record carries the `type` and CloudEvents headers, read from the stored
envelope (a retried claim is republished from its stored bytes).
"""

from __future__ import annotations

import asyncio
import logging

from faststream.kafka import KafkaBroker

from shared.events import TOPIC_INBOUND, encoded_event_headers
from shared.kafka.broker import broker_producer
from shared.kafka.publishers import declare, enqueue
from shared.settings import Settings

log = logging.getLogger("switchboard.ingest.publisher")


class Publisher:
    """Publishes to `chat.inbound` through the broker's producer, replaced when it cannot recover on its own."""

    def __init__(self, settings: Settings, broker: KafkaBroker):
        self.settings = settings
        self.broker = broker
        self.topic = settings.topic(TOPIC_INBOUND)
        self.timeout_s = settings.kafka_send_timeout_s
        self.publisher = declare(broker, settings, TOPIC_INBOUND)
        self.producer = broker_producer(broker)

    @property
    def replacements(self) -> int:
        """How many times the producer was replaced."""
        return self.producer.replacements

    async def start(self) -> None:
        """Connect the broker (its producer) now if Kafka answers; otherwise the first publish starts a producer."""
        try:
            await asyncio.wait_for(self.broker.connect(), self.timeout_s)
        except Exception as exc:
            log.warning("Kafka producer not started yet; will retry on publish", extra={"error": repr(exc)})

    async def stop(self) -> None:
        """Stop what `start` connected: flush and close the producer (and any replaced one still closing)."""
        await self.broker.stop()

    async def publish(self, records: list[tuple[str, bytes]]) -> list[BaseException | None]:
        """Send (chat_id, value) records in order, keyed by chat id; per record, None once acked or the error."""
        if not records:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        futures: list[asyncio.Future] = []
        errors: list[BaseException | None] = [None] * len(records)
        try:
            async with asyncio.timeout_at(deadline):
                for chat_id, value in records:
                    # Only enqueues (in call order, so one chat's records keep their order).
                    headers = encoded_event_headers(value)
                    futures.append(await enqueue(self.publisher, value, key=chat_id.encode(), headers=headers))
        except Exception as exc:  # timeout or Kafka error before every record was enqueued
            for i in range(len(futures), len(records)):
                errors[i] = exc
        if futures:
            done, _ = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
            for i, fut in enumerate(futures):
                if fut not in done or fut.cancelled():
                    errors[i] = TimeoutError(f"Kafka did not acknowledge within {self.timeout_s}s")
                elif fut.exception() is not None:
                    errors[i] = fut.exception()
        self.producer.note(any(e is not None for e in errors))
        return errors
