"""The producer side: the broker's idempotent producer, replaced when it cannot recover by itself.

aiokafka's producer reconnects by itself after a broker outage. It does not recover when its
sender task has died (a fenced producer, an out-of-order sequence, an unexpected error), nor
when the broker lost its idempotence state; then, and after failures that outlast a few send
timeouts, the next send goes through a new producer (a new producer id and sequence).

Every record of the system goes through a FastStream publisher declared on the process's broker
(`shared.kafka.broker.make_broker`), and every publisher sends through the broker's producer
object (`broker.config.producer`). `ResilientProducer` *is* that object: a subclass of
FastStream's `AioKafkaFastProducerImpl`, installed by `make_broker` in the broker's config (the
same slot FastStream's own `TestKafkaBroker` swaps for its in-memory producer). It keeps
FastStream's public producer interface:
- `connect(producer, ...)` is what `broker.connect()` / `broker.start()` call with the aiokafka
  producer the broker built from its options; it is started and becomes the current one;
- `publish(cmd)` / `publish_batch(cmd)` are what every publisher calls: the current producer is
  checked first (replaced if its sender task died or it has failed for longer than
  REPLACE_AFTER_TIMEOUTS send timeouts), and each outcome (the ack future's, or the error) is
  fed to the failure clock;
- `disconnect()` (from `broker.stop()`) flushes and closes the current producer
  and any replaced one still closing, each bounded.
So publishers need nothing of their own: `publisher.publish(value, key=..., headers=...,
no_confirm=True)` returns aiokafka's ack future (`shared.kafka.publishers.enqueue`), and the
replacement happens underneath.
Replacements are built by `make_producer` with the same options as the broker's
(`producer_options`). A caller that judges a whole round itself (acks awaited with a deadline,
as ingest's publisher does) reports it with `note`.

FastStream offers no way to swap the aiokafka producer of a connected broker (its `connect`
builds admin, producer and consumer factory together, once), hence the subclass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# FastStream builds producers from connection options only; a replacement needs aiokafka's class,
# and the key cache needs its default partitioner (murmur2, as Java clients).
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream.exceptions import IncorrectState
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.kafka.publisher.state import EmptyProducerState, RealProducer

from shared.settings import Settings

if TYPE_CHECKING:
    from fast_depends.library.serializer import SerializerProto
    from faststream._internal.parser import CodecProto
    from faststream.kafka.response import KafkaPublishCommand

log = logging.getLogger("switchboard.kafka")

# After this many send timeouts of uninterrupted failure, try a fresh producer.
REPLACE_AFTER_TIMEOUTS = 3
CLOSE_TIMEOUT_S = 10.0
# Bytes one partition's batch may hold: a whole relay round for a partition (500 facts of ~1 KB over
# the topic's partitions), and half of Kafka's default message.max.bytes (1 MiB; the local broker
# allows 4 MiB, deploy/local/files/server.properties.template), so a broker left at its defaults
# never refuses a full batch.
MAX_BATCH_BYTES = 512 * 1024


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


def producer_options(settings: Settings) -> dict:
    """The options of every producer of the system (the broker's, and a replacement's)."""
    return dict(
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        # aiokafka buffers at most one batch per partition and blocks `send` until it is drained;
        # at its default (16 KiB, ~20 records) a round of the outbox relay waited for a produce
        # round trip every 20 records per partition (docs/performance.md, eighth session).
        max_batch_size=MAX_BATCH_BYTES,
        partitioner=CachingPartitioner(),
        request_timeout_ms=int(settings.kafka_send_timeout_s * 1000),
        max_request_size=2 * 1024 * 1024,
    )


def make_producer(settings: Settings, **overrides) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica and never duplicates on retry."""
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="switchboard",
        **producer_options(settings),
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


class ResilientProducer(AioKafkaFastProducerImpl):
    """The broker's producer: an idempotent aiokafka producer, replaced when it cannot recover by itself.

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
        super().__init__(parser=None, decoder=None)
        self.settings = settings
        self.replace_after_s = REPLACE_AFTER_TIMEOUTS * settings.kafka_send_timeout_s
        self.close_timeout_s = close_timeout_s
        self._factory = factory
        self._current: AIOKafkaProducer | None = None
        self._failing_since: float | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._stopped = False
        self.replacements = 0

    # ---- FastStream's producer interface -------------------------------------------------

    async def connect(
        self,
        producer: AIOKafkaProducer,
        serializer: SerializerProto | None,
        codec: CodecProto | None = None,
    ) -> None:
        """The broker connects: start the producer it built from its options; it becomes the current one."""
        self.serializer = serializer
        if codec is not None:
            self.codec = codec
        self._stopped = False
        async with self._lock:
            await self._install(producer)

    async def disconnect(self) -> None:
        """Flush and close the producer, and any replaced one still closing; bounded per producer."""
        self._stopped = True
        if self._current is not None:
            self._retire(self._current)
            self._current = None
        self._producer = EmptyProducerState()  # FastStream's handle; the close runs in `_retire`, bounded
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def publish(self, cmd: KafkaPublishCommand) -> Any:
        """Send one record through the current producer (replaced first if it cannot recover)."""
        await self._ensure()
        return self._observed(await self._attempt(super().publish(cmd)))

    async def publish_batch(self, cmd: KafkaPublishCommand) -> Any:
        """Send a batch of records through the current producer (replaced first if it cannot recover)."""
        await self._ensure()
        return self._observed(await self._attempt(super().publish_batch(cmd)))

    # ---- ours ----------------------------------------------------------------------------

    async def send(self, topic: str, value: bytes, *, key: bytes, headers: dict[str, str]) -> asyncio.Future:
        """Enqueue one record as `publish` would, without building FastStream's command; returns its ack future.

        The hot publishers' path (`shared.kafka.publishers.enqueue`): the same record on the wire
        (`content-type` first, then `correlation_id`, then `headers`), a third less CPU per record.
        """
        await self._ensure()
        wire = {"content-type": headers.get("content-type", ""), "correlation_id": headers.get("ce_id", "")}
        wire.update(headers)
        sent = await self._attempt(
            self._producer.producer.send(topic, value, key=key, headers=[(k, v.encode()) for k, v in wire.items()])
        )
        sent.add_done_callback(self._observe)
        return sent

    async def start(self) -> None:
        """Start a producer now without connecting the rest of the broker (raises while Kafka does not answer)."""
        self._stopped = False
        await self._ensure()

    def note(self, failed: bool) -> None:
        """Record the outcome of a round of sends: a failure starts the clock, a success stops it."""
        if not failed:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()

    async def _attempt(self, sending) -> Any:
        try:
            return await sending
        except Exception:
            self.note(True)
            raise

    def _observed(self, result: Any) -> Any:
        if isinstance(result, asyncio.Future):  # no_confirm: the ack arrives later
            result.add_done_callback(self._observe)
        else:
            self.note(False)
        return result

    def _observe(self, future: asyncio.Future) -> None:
        self.note(future.cancelled() or future.exception() is not None)

    def _usable(self) -> bool:
        producer = self._current
        if producer is None:
            return False
        # aiokafka exposes no public flag for a dead sender task; without it nothing is ever sent again.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and task.done():
            return False
        if self._failing_since is None:
            return True
        return asyncio.get_running_loop().time() - self._failing_since <= self.replace_after_s

    async def _ensure(self) -> None:
        if self._stopped:
            raise IncorrectState("the Kafka producer was stopped")
        if self._usable():
            return
        async with self._lock:
            if self._usable():
                return
            if self._current is not None:
                log.warning("replacing the Kafka producer", extra={"client": "switchboard"})
                self.replacements += 1
            await self._install(self._factory(self.settings))

    async def _install(self, producer: AIOKafkaProducer) -> None:
        """Start `producer` and make it the one publishers send through; the previous one retires."""
        try:
            await producer.start()
        except BaseException:
            self._retire(producer)
            raise
        if self._current is not None:
            self._retire(self._current)
        self._current = producer
        self._failing_since = None
        self._producer = RealProducer(producer)

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
