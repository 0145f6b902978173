"""The batch consumer: each poll applied in one Postgres transaction, offsets committed after it.

The transaction also records the applied event ids (shared.tracking), and the Kafka offsets are
committed only after it has committed. Records that can never be applied go to the dead-letter
topic with their reason, once each (`shared.kafka.deadletter`); transient failures are retried in
place (`shared.retry`), never skipped, and turn the group unhealthy past SWITCHBOARD_CONSUMER_STALL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from shared import faults, metrics
from shared.events import TOPIC_DLQ, utcnow
from shared.kafka.deadletter import DeadLetters, Poisoned
from shared.kafka.decoding import Incoming, Poison, decode_record, skippable
from shared.kafka.producer import ResilientProducer
from shared.retry import Backoff
from shared.settings import Settings

if TYPE_CHECKING:  # shared.tracking imports this package (Incoming): no import cycle at run time
    from shared.tracking import EventIds

log = logging.getLogger("switchboard.kafka")

MAX_BACKOFF_S = 5.0


# chat.lifecycle consumers (stats, idle monitor) trade up to fetch_max_wait (50 ms) of latency for
# larger batches; the assigner's inbound consumer keeps 1 byte (apply latency is its target).
LIFECYCLE_FETCH_MIN_BYTES = 64 * 1024


# What a group's applier returns for one transaction; BatchConsumer hands it to `after_commit`.
R = TypeVar("R")
ApplyBatch = Callable[[asyncpg.Connection, list[Incoming]], Awaitable[R]]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(
        self,
        lock: asyncio.Lock,
        group: str,
        logical: dict[str, str],
        flush: Callable[[], Awaitable[None]],
        forget: Callable[[set], None],
    ):
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


class BatchConsumer(Generic[R]):
    """Consumes topics as one group; applies each partition batch once, exactly once in effect."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer | ResilientProducer,
        group_id: str,
        topics: Sequence[str],
        tracker: EventIds,
        apply: ApplyBatch[R],
        after_commit: Callable[[R], None] | None = None,
        max_records: int | None = None,
        wanted_types: frozenset[str] | None = None,
        fetch_min_bytes: int = 1,
    ):
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.group_id = settings.group(group_id)
        self.logical = {settings.topic(t): t for t in topics}
        self.tracker = tracker
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
        self._consumer.subscribe(
            list(self.logical),
            listener=_Rebalance(self._lock, self.group_id, self.logical, self._flush_commit, self._forget),
        )
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
        except TimeoutError:
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
                            extra={
                                "group": self.group_id,
                                "error": repr(exc),
                                "partitions": ",".join(
                                    f"{tp.topic}/{tp.partition}@{r[0].offset}" for tp, r in live.items()
                                ),
                            },
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
                if self.wanted_types is not None and skippable(rec.headers, self.wanted_types):
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
            self._commit(consumer, {tp: records[-1].offset + 1 for tp, records in live.items()})
        )
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
        if not good and not poisoned:
            return []
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                applied, markers = await self.tracker.claim_new(conn, good, [p.marker for p in poisoned])
                for p in poisoned:
                    if p.marker in markers:
                        await self.dead_letters.send(p)
                # A 1-tuple, not the bare result: None is a result too (some appliers return nothing).
                result = (await self.apply(conn, applied),) if applied else None
        faults.reached("consumer_after_apply")  # crash tests: committed in Postgres, offsets not yet in Kafka
        if result is not None and self.after_commit is not None:
            self.after_commit(result[0])
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
