"""The producer side: an idempotent producer, and the one wrapper that replaces it when it is stuck.

aiokafka's producer reconnects by itself after a broker outage. It does not recover when its
sender task has died (a fenced producer, an out-of-order sequence, an unexpected error), nor
when the broker lost its idempotence state; then, and after failures that outlast a few send
timeouts, the next send goes through a new producer (a new producer id and sequence).
Every producer of the system goes through `ResilientProducer`: the services' (outbox, idle
facts, dead letters) and ingest's `Publisher`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from shared.settings import Settings

log = logging.getLogger("switchboard.kafka")

# After this many send timeouts of uninterrupted failure, try a fresh producer.
REPLACE_AFTER_TIMEOUTS = 3
CLOSE_TIMEOUT_S = 10.0


class CachingPartitioner:
    """aiokafka's DefaultPartitioner (murmur2 of the key, as Java clients), remembered per key.

    murmur2 is pure Python in aiokafka (~11 us a call); a chat's events share its key, so most
    sends hit the cache. The partition count is part of the cache key: adding partitions remaps.
    """

    def __init__(self, size: int = 100_000):
        self._size = size
        self._cache: dict[tuple[bytes, int], int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._default(key, all_partitions, available)
        slot = (key, len(all_partitions))
        partition = self._cache.get(slot)
        if partition is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            partition = self._cache[slot] = self._default(key, all_partitions, available)
        return partition


def make_producer(settings: Settings, **overrides) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica and never duplicates on retry."""
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        partitioner=CachingPartitioner(),
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=int(settings.kafka_send_timeout_s * 1000),
        max_request_size=2 * 1024 * 1024,
        client_id="switchboard",
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


class ResilientProducer:
    """The idempotent producer, replaced by a fresh one when it cannot recover by itself.

    A failed send (its future's error) starts the failure clock, an acknowledged one stops it; a
    caller that judges a whole round itself (acks awaited with a deadline) reports it with `note`.
    """

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[Settings], AIOKafkaProducer] = make_producer,
        *,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ):
        self.settings = settings
        self.replace_after_s = REPLACE_AFTER_TIMEOUTS * settings.kafka_send_timeout_s
        self.close_timeout_s = close_timeout_s
        self._factory = factory
        self._producer: AIOKafkaProducer | None = None
        self._failing_since: float | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self.replacements = 0

    async def start(self) -> None:
        """Start the first producer (raises while Kafka does not answer)."""
        await self._current()

    async def stop(self) -> None:
        """Flush and close the producer, and any replaced one still closing; bounded per producer."""
        if self._producer is not None:
            self._retire(self._producer)
            self._producer = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def note(self, failed: bool) -> None:
        """Record the outcome of a round of sends: a failure starts the clock, a success stops it."""
        if not failed:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()

    async def send(self, topic: str, value=None, key=None, headers=None) -> asyncio.Future:
        """Enqueue a record; the returned future resolves once Kafka acknowledged it."""
        producer = await self._current()
        try:
            future = await producer.send(topic, value=value, key=key, headers=headers)
        except Exception:
            self.note(True)
            raise
        future.add_done_callback(self._observe)
        return future

    async def send_and_wait(self, topic: str, value=None, key=None, headers=None):
        """Send one record and wait for its acknowledgement."""
        return await (await self.send(topic, value=value, key=key, headers=headers))

    def _observe(self, future: asyncio.Future) -> None:
        self.note(future.cancelled() or future.exception() is not None)

    def _usable(self) -> bool:
        producer = self._producer
        if producer is None:
            return False
        # aiokafka exposes no public flag for a dead sender task; without it nothing is ever sent again.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and task.done():
            return False
        if self._failing_since is None:
            return True
        return asyncio.get_running_loop().time() - self._failing_since <= self.replace_after_s

    async def _current(self) -> AIOKafkaProducer:
        if self._usable():
            return self._producer  # type: ignore[return-value]
        async with self._lock:
            if self._usable():
                return self._producer  # type: ignore[return-value]
            if self._producer is not None:
                log.warning("replacing the Kafka producer", extra={"client": "switchboard"})
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
        """Close a producer in the background (bounded: a dead broker must not hang anyone)."""

        async def close():
            try:
                await asyncio.wait_for(producer.stop(), self.close_timeout_s)
            except Exception as exc:
                log.warning("Kafka producer did not close cleanly", extra={"error": repr(exc)})

        task = asyncio.create_task(close(), name="kafka:retire-producer")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
