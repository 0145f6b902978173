"""Kafka plumbing: an idempotent producer, topic creation, readiness, and the batch consumer.

The consumer applies each partition's batch in one Postgres transaction that also records the
applied event ids, and commits the Kafka offsets only after that transaction has committed.
Records that can never be applied go to the dead-letter topic with their reason, once each
(`shared.deadletter`); transient failures are retried in place (`shared.retry`), never skipped, and
turn the group unhealthy past SWITCHBOARD_CONSUMER_STALL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel, ValidationError

from shared import faults
from shared import metrics
from shared.deadletter import DeadLetters, Poisoned
from shared.events import ADAPTERS, ALL_TOPICS, TOPIC_DLQ, TYPE_HEADER, decode_json, utcnow
from shared.events import LIFECYCLE_TYPES as KNOWN_TYPES
from shared.retry import Backoff
from shared.settings import Settings

log = logging.getLogger("switchboard.kafka")

MAX_BACKOFF_S = 5.0


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

    aiokafka reconnects after a broker restart, but an idempotent producer whose sequence state
    the broker lost (OutOfOrderSequenceNumber) or whose sender task died fails every send from
    then on. When sends have failed for longer than three send timeouts, or the sender is dead,
    the next send goes through a new producer (a new producer id and sequence).
    """

    def __init__(self, settings: Settings, **overrides):
        self.settings = settings
        self.overrides = overrides
        self.replace_after_s = 3 * settings.kafka_send_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._failing_since: float | None = None
        self._lock = asyncio.Lock()
        self.replacements = 0

    async def start(self) -> None:
        """Start the first producer (raises while Kafka does not answer)."""
        producer = make_producer(self.settings, **self.overrides)
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close, bounded: a dead broker must not hang shutdown."""
        if self._producer is not None:
            await _bounded_stop(self._producer)
            self._producer = None

    def _usable(self) -> bool:
        producer = self._producer
        if producer is None:
            return False
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None and task.done():
            return False
        return self._failing_since is None or time.monotonic() - self._failing_since < self.replace_after_s

    async def _current(self) -> AIOKafkaProducer:
        if self._usable():
            return self._producer  # type: ignore[return-value]
        async with self._lock:
            if self._usable():
                return self._producer  # type: ignore[return-value]
            old, self._producer = self._producer, None
            if old is not None:
                log.warning("replacing the Kafka producer", extra={"client": "switchboard"})
                self.replacements += 1
                asyncio.get_running_loop().create_task(_bounded_stop(old))
            self._failing_since = None
            await self.start()
            return self._producer  # type: ignore[return-value]

    def _observe(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
        else:
            self._failing_since = None

    async def send(self, topic: str, value=None, key=None, headers=None) -> asyncio.Future:
        """Enqueue a record; the returned future resolves once Kafka acknowledged it."""
        producer = await self._current()
        try:
            future = await producer.send(topic, value=value, key=key, headers=headers)
        except Exception:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            raise
        future.add_done_callback(self._observe)
        return future

    async def send_and_wait(self, topic: str, value=None, key=None, headers=None):
        """Send one record and wait for its acknowledgement."""
        return await (await self.send(topic, value=value, key=key, headers=headers))


async def _bounded_stop(producer: AIOKafkaProducer, timeout_s: float = 10.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except Exception as exc:
        log.warning("Kafka producer did not close cleanly", extra={"error": repr(exc)})


async def ensure_topics(settings: Settings, names: Sequence[str] = ALL_TOPICS) -> list[str]:
    """Create the SPEC §2 topics (with the configured prefix) that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(n) for n in names]
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=settings.topic_partitions,
                              replication_factor=settings.topic_replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        await admin.close()


async def kafka_ready(bootstrap_servers: str, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request (not merely accepts a connection)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Incoming:
    """A decoded event with where it came from."""

    event: BaseModel
    topic: str
    partition: int
    offset: int


# chat.lifecycle consumers (stats, idle monitor) trade up to fetch_max_wait (50 ms) of latency for
# larger batches; the assigner's inbound consumer keeps 1 byte (apply latency is its target).
LIFECYCLE_FETCH_MIN_BYTES = 64 * 1024


class Poison(Exception):
    """A record that can never be applied; it goes to the dead-letter topic."""


ApplyBatch = Callable[[asyncpg.Connection, list[Incoming]], Awaitable[None]]


def decode_record(logical_topic: str, key: bytes | None, value: bytes | None) -> BaseModel:
    """Decode and validate one record of a topic, or raise Poison with the reason."""
    adapter = ADAPTERS.get(logical_topic)
    if adapter is None:
        raise Poison(f"no schema for topic {logical_topic}")
    try:
        event = adapter.validate_json(value) if value is not None else None
    except ValidationError:
        event = None
    if event is None:
        _explain(adapter, value)  # the slow path only to name what is wrong
    expected = event.chat_id.encode()
    if key != expected:
        raise Poison(f"record key {key!r} does not match chat_id {event.chat_id!r}")
    return event


def _explain(adapter, value: bytes | None) -> None:
    try:
        data = decode_json(value)
    except ValueError as exc:
        raise Poison(str(exc)) from None
    if "schema_version" in data and data["schema_version"] != 1:
        raise Poison(f"unsupported schema_version {data['schema_version']!r}")
    try:
        adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Poison(f"validation failed at {where or 'record'}: {first['msg']}") from None
    raise Poison("record does not validate as JSON")


def _skippable(headers, wanted: frozenset[str]) -> bool:
    """True when the record's `type` header names a known event type this group does not act on."""
    for name, value in headers or ():
        if name == TYPE_HEADER:
            try:
                kind = value.decode()
            except (AttributeError, UnicodeDecodeError):
                return False
            return kind in KNOWN_TYPES and kind not in wanted
    return False


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, lock: asyncio.Lock, group: str, logical: dict[str, str],
                 flush: Callable[[], Awaitable[None]], forget: Callable[[set], None]):
        self._lock = lock
        self._group = group
        self._logical = logical
        self._flush = flush
        self._forget = forget

    async def on_partitions_revoked(self, revoked):
        # Wait for the batch in flight: its offsets are committed before the partition goes.
        async with self._lock:
            await self._flush()
            log.info("partitions revoked", extra={"group": self._group, "partitions": str(sorted(revoked))})
            self._forget(set(revoked))
            for tp in revoked:
                try:  # the new owner reports this partition's lag from now on
                    metrics.CONSUMER_LAG.remove(self._group, self._logical[tp.topic], str(tp.partition))
                except KeyError:
                    pass

    async def on_partitions_assigned(self, assigned):
        log.info("partitions assigned", extra={"group": self._group, "partitions": str(sorted(assigned))})


class BatchConsumer:
    """Consumes topics as one group; applies each partition batch once, exactly once in effect."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: "AIOKafkaProducer | ResilientProducer",
        group_id: str,
        topics: Sequence[str],
        claim_sql: str,
        apply: ApplyBatch,
        after_commit: Callable[[object], None] | None = None,
        max_records: int | None = None,
        wanted_types: frozenset[str] | None = None,
        fetch_min_bytes: int = 1,
    ):
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.group_id = settings.group(group_id)
        self.logical = {settings.topic(t): t for t in topics}
        self.claim_sql = claim_sql
        self.apply = apply
        self.after_commit = after_commit
        self.max_records = max_records or settings.consumer_max_records
        # Types this group acts on. A record whose `type` header names another known type is
        # skipped unparsed (its effect here would be nothing); records without the header, or
        # naming an unknown type, are decoded as usual (so poison still reaches the DLQ).
        self.wanted_types = wanted_types
        # >1: the broker holds a fetch until this much is there (or fetch_max_wait passed), so a
        # busy topic comes in fewer, larger batches: fewer transactions and loop turns per record.
        self.fetch_min_bytes = fetch_min_bytes
        self._lock = asyncio.Lock()
        self._commit_task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # Polls, batches and crashes wait through one backoff; how long it has failed is readiness.
        self._backoff = Backoff("consumer", base=0.1, cap=MAX_BACKOFF_S)
        self.dead_letters = DeadLetters(producer, settings.topic(TOPIC_DLQ), self.group_id, self.logical)
        # Partitions whose last batch failed: until each applied (or left), an empty poll is no recovery.
        self._retrying: set[TopicPartition] = set()

    async def start(self) -> None:
        """Join the group and start consuming in a background task."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=50,  # a quiet partition must not hold a busy poll back for 500 ms
            fetch_min_bytes=self.fetch_min_bytes,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            client_id=f"switchboard-{self.group_id}",
        )
        self._consumer.subscribe(list(self.logical), listener=_Rebalance(self._lock, self.group_id, self.logical,
                                                                         self._flush_commit, self._forget))
        await self._consumer.start()
        for logical in self.logical.values():  # a first dead letter must show as an increase from 0
            metrics.DLQ_RECORDS.labels(self.group_id, logical)
        self._task = asyncio.create_task(self._supervise(), name=f"consumer:{self.group_id}")
        # Read at scrape time, so a dead task shows as 0 without anyone updating the gauge.
        metrics.CONSUMER_HEALTHY.labels(self.group_id).set_function(lambda: 1.0 if self.healthy else 0.0)

    async def stop(self) -> None:
        """Finish the batch in flight, commit it, leave the group."""
        self._stopping.set()
        if self._task:  # asyncio.wait: a task that died or was cancelled must not fail the shutdown
            done, _ = await asyncio.wait({self._task}, timeout=30)
            if not done:
                self._task.cancel()
        try:
            await asyncio.wait_for(self._flush_commit(), 15)
        except asyncio.TimeoutError:
            log.warning("last offset commit did not finish", extra={"group": self.group_id})
        if self._consumer:
            try:  # bounded: leaving the group must not hang shutdown while Kafka is down
                await asyncio.wait_for(self._consumer.stop(), 15)
            except Exception as exc:
                log.warning("consumer did not leave cleanly", extra={"group": self.group_id, "error": repr(exc)})
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_HEALTHY.remove(self.group_id)

    @property
    def running(self) -> bool:
        """True while the consume loop is alive."""
        return self._task is not None and not self._task.done()

    def _forget(self, revoked: set) -> None:
        """Partitions gone to another member: their retries and dead letters are no longer ours."""
        self._retrying -= revoked
        self.dead_letters.forget(revoked)

    @property
    def failing_for(self) -> float:
        """Seconds the group has been failing (polls, batches or its loop) without a success since."""
        return self._backoff.failing_for()

    @property
    def healthy(self) -> bool:
        """Alive, and not failing for longer than SWITCHBOARD_CONSUMER_STALL_S."""
        return self.running and self.failing_for < self.settings.consumer_stall_s

    async def _supervise(self) -> None:
        """Run the consume loop; after a crash, back off, rewind to the committed offsets and run it again."""
        while not self._stopping.is_set():
            try:
                await self._run()
                return
            except Exception:
                log.exception("consume loop crashed; restarting", extra={"group": self.group_id})
                metrics.CONSUMER_RETRIES.labels(self.group_id).inc()
                await self._backoff.wait()
                await self._rewind()

    async def _rewind(self) -> None:
        """Seek each owned partition to its committed offset, so records fetched but not applied are read again."""
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            try:  # never consume on from an unknown position: that could skip records
                async with self._lock:
                    await self._flush_commit()
                    for tp in consumer.assignment():
                        committed = await consumer.committed(tp)
                        if committed is None:  # as auto_offset_reset="earliest" would
                            await consumer.seek_to_beginning(tp)
                        else:
                            consumer.seek(tp, committed)
                return
            except Exception as exc:
                log.warning("rewind after a crash failed", extra={"group": self.group_id, "error": repr(exc)})
                await self._backoff.wait()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=self.settings.consumer_poll_timeout_ms, max_records=self.max_records
                )
            except KafkaError as exc:
                log.warning("poll failed, retrying", extra={"group": self.group_id, "error": repr(exc)})
                metrics.CONSUMER_RETRIES.labels(self.group_id).inc()
                await self._backoff.wait()
                continue
            failed = False
            async with self._lock:
                live = {tp: recs for tp, recs in batches.items() if recs and tp in consumer.assignment()}
                if live:
                    try:
                        await self._handle(consumer, live)
                        self._retrying.difference_update(live)
                    except Exception as exc:  # transient: retry the same records, never skip
                        failed = True
                        self._retrying.update(live)
                        metrics.CONSUMER_RETRIES.labels(self.group_id).inc()
                        log.warning(
                            "batch failed, will retry",
                            extra={"group": self.group_id, "error": repr(exc),
                                   "partitions": ",".join(f"{tp.topic}/{tp.partition}@{r[0].offset}"
                                                          for tp, r in live.items())},
                        )
                        for tp, records in live.items():
                            consumer.seek(tp, records[0].offset)
            await self._export_lag(consumer)
            if failed:
                await self._backoff.wait()
            elif not self._retrying:
                self._backoff.reset()

    async def _handle(self, consumer: AIOKafkaConsumer, live: dict[TopicPartition, list]) -> None:
        """Apply one poll: every partition's batch in a single transaction, then commit their offsets.

        One transaction per poll rather than per partition: the same all-or-nothing per partition
        batch, with a sixth of the round trips when six partitions deliver at once.
        """
        good: list[Incoming] = []
        poisoned: list[Poisoned] = []
        ignored: dict[str, int] = {}
        for tp, records in live.items():
            logical = self.logical[tp.topic]
            for rec in records:
                if self.wanted_types is not None and _skippable(rec.headers, self.wanted_types):
                    ignored[logical] = ignored.get(logical, 0) + 1
                    continue
                try:
                    event = decode_record(logical, rec.key, rec.value)
                except Poison as poison:
                    poisoned.append(Poisoned(tp, rec, str(poison)))
                    continue
                good.append(Incoming(event, logical, tp.partition, rec.offset))
        started = time.perf_counter()
        try:
            applied = await self._apply(good, poisoned)
        except asyncpg.DataError:
            # Some record holds data the database refuses (class 22): never applicable. Apply the
            # poll one record at a time so only that record goes to the dead-letter topic.
            applied = await self._apply([], poisoned)
            for g in good:
                try:
                    applied += await self._apply([g])
                except asyncpg.DataError as exc:
                    tp = TopicPartition(self.settings.topic(g.topic), g.partition)
                    record = next(r for r in live[tp] if r.offset == g.offset)
                    await self._apply([], [Poisoned(tp, record, f"database refused the record: {exc}")])
        # The offsets are committed in the background while the next poll is applied: the effects
        # and their event ids are already committed in Postgres, so a commit that is late or lost
        # only makes a restarted or new owner re-read records it then skips by id. One commit is in
        # flight at a time (they carry increasing offsets); rebalance and stop wait for it.
        await self._flush_commit()
        self._commit_task = asyncio.create_task(
            self._commit(consumer, {tp: records[-1].offset + 1 for tp, records in live.items()}))
        now = utcnow()
        metrics.CONSUMER_BATCH_SECONDS.labels(self.group_id).observe(time.perf_counter() - started)
        counts: dict[tuple[str, str], int] = {}
        applied_ids = {id(g) for g in applied}
        for g in good:
            key = (g.topic, "applied" if id(g) in applied_ids else "duplicate")
            counts[key] = counts.get(key, 0) + 1
        for (topic, result_label), n in counts.items():
            metrics.CONSUMER_EVENTS.labels(self.group_id, topic, result_label).inc(n)
        for topic, n in ignored.items():
            metrics.CONSUMER_EVENTS.labels(self.group_id, topic, "ignored").inc(n)
        for g in applied:
            metrics.EVENT_APPLY_LATENCY.labels(self.group_id).observe(
                max(0.0, (now - g.event.occurred_at).total_seconds())
            )

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict) -> None:
        try:
            await consumer.commit(offsets)
            self.dead_letters.committed(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A partition moved to another member; it re-reads these records and skips them by id.
            log.warning("offset commit refused after rebalance", extra={"group": self.group_id, "error": repr(exc)})
        except Exception as exc:  # Kafka unavailable: the next commit carries these offsets too
            log.warning("offset commit failed", extra={"group": self.group_id, "error": repr(exc)})

    async def _flush_commit(self) -> None:
        """Wait for the offset commit in flight, if any."""
        task, self._commit_task = self._commit_task, None
        if task is not None:
            await asyncio.shield(task)

    async def _apply(self, good: list[Incoming], poisoned: Sequence[Poisoned] = ()) -> list[Incoming]:
        """Claim the events' ids and apply the new ones in one transaction; returns those applied.

        Poison records are dead-lettered in that transaction, unless their marker was claimed before.
        """
        applied: list[Incoming] = []
        result = None
        if not good and not poisoned:
            return applied
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                ids = [g.event.event_id for g in good] + [p.marker for p in poisoned]
                fresh = set(await conn.fetchval(self.claim_sql, ids) or [])
                for p in poisoned:
                    if p.marker in fresh:
                        await self.dead_letters.send(p)
                seen = set()
                for g in good:
                    if g.event.event_id in fresh and g.event.event_id not in seen:
                        seen.add(g.event.event_id)
                        applied.append(g)
                if applied:
                    result = await self.apply(conn, applied)
        faults.reached("consumer_after_apply")  # crash tests: committed in Postgres, offsets not yet in Kafka
        if applied and self.after_commit is not None:
            self.after_commit(result)
        return applied

    async def _export_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = await asyncio.wait_for(consumer.position(tp), 1)
            except Exception:
                continue
            metrics.CONSUMER_LAG.labels(self.group_id, self.logical[tp.topic], str(tp.partition)).set(
                max(0, high - pos)
            )
