"""Kafka side of ingest: publish records keyed by chat id and wait, bounded, for `acks=all`.

aiokafka's producer reconnects by itself after a broker outage. It does not recover when its
sender task has died (a fenced producer, an out-of-order sequence, an unexpected error); then,
and after failures that outlast a few send timeouts, the producer is replaced by a new one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiokafka import AIOKafkaProducer

from shared.events import TOPIC_INBOUND
from shared.kafka import make_producer
from shared.settings import Settings

log = logging.getLogger("switchboard.ingest.publisher")

# After this many send timeouts of uninterrupted failure, try a fresh producer.
REPLACE_AFTER_TIMEOUTS = 3


class Publisher:
    """Owns the producer of `chat.inbound`; replaces it when it cannot recover on its own."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], AIOKafkaProducer] = make_producer):
        self.settings = settings
        self.topic = settings.topic(TOPIC_INBOUND)
        self.timeout_s = settings.kafka_send_timeout_s
        self._factory = factory
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._retiring: set[asyncio.Task] = set()
        self.replacements = 0

    async def start(self) -> None:
        """Start the producer now if Kafka answers; otherwise the first publish starts it."""
        try:
            await asyncio.wait_for(self._current(), self.timeout_s)
        except Exception as exc:
            log.warning("Kafka producer not started yet; will retry on publish", extra={"error": repr(exc)})

    async def stop(self) -> None:
        """Flush and close the producer, and any replaced one still closing."""
        if self._producer is not None:
            self._retire(self._producer)
            self._producer = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

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
                producer = await self._current()
                for chat_id, value in records:
                    # `send` only enqueues (in call order, so one chat's records keep their order).
                    futures.append(await producer.send(self.topic, value=value, key=chat_id.encode()))
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
        self._note(any(e is not None for e in errors), loop.time())
        return errors

    def _note(self, failed: bool, now: float) -> None:
        if not failed:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = now

    def _usable(self, producer: AIOKafkaProducer | None) -> bool:
        if producer is None:
            return False
        # aiokafka exposes no public flag for a dead sender task; without it nothing is ever sent again.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and task.done():
            return False
        if self._failing_since is not None:
            stuck_for = asyncio.get_running_loop().time() - self._failing_since
            if stuck_for > REPLACE_AFTER_TIMEOUTS * self.timeout_s:
                return False
        return True

    async def _current(self) -> AIOKafkaProducer:
        if self._usable(self._producer):
            return self._producer  # type: ignore[return-value]
        async with self._lock:
            if self._usable(self._producer):
                return self._producer  # type: ignore[return-value]
            if self._producer is not None:
                log.warning("replacing the Kafka producer")
                self._retire(self._producer)
                self._producer = None
                self.replacements += 1
            self._failing_since = None
            producer = self._factory(self.settings)
            try:
                await producer.start()
            except BaseException:
                self._retire(producer)
                raise
            self._producer = producer
            return producer

    def _retire(self, producer: AIOKafkaProducer) -> None:
        async def close():
            try:
                await asyncio.wait_for(producer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("closing a Kafka producer failed", extra={"error": repr(exc)})

        task = asyncio.create_task(close(), name="ingest:retire-producer")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
