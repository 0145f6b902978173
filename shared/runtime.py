"""What a running service holds (pool, producer, consumers, loops) and how it starts and stops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from shared import db, gc_tuning, migrations
from shared.kafka.admin import ensure_topics, kafka_ready
from shared.kafka.broker import broker_producer, make_broker
from shared.kafka.consumer import BatchConsumer
from shared.kafka.producer import ResilientProducer
from shared.retention import PruneJob, Pruner
from shared.retry import Backoff, retrying
from shared.settings import Settings
from shared.tracking import EventIds

log = logging.getLogger("switchboard.runtime")

# A restarted background loop that has run this long without crashing counts as recovered.
LOOP_RECOVERED_AFTER_S = 10.0
STARTUP_TRIES = 60  # full jitter halves the mean wait: about the two minutes the old 30 doubling tries took


class Runtime:
    """One service's connections and background work; `start` and `stop` are its whole lifecycle."""

    def __init__(self, settings: Settings, service: str, schema: str, migrations_dir: Path):
        self.settings = settings
        self.service = service
        self.schema = schema
        self.migrations_dir = migrations_dir
        self.pool: asyncpg.Pool | None = None
        # The process's FastStream broker: its subscribers and publishers are declared on it.
        self.broker = make_broker(settings, service)
        self.producer: ResilientProducer | None = None
        self.consumers: list[BatchConsumer] = []
        self._loops: list[asyncio.Task] = []
        self._loop_backoffs: dict[str, Backoff] = {}
        self._kafka_checked = (0.0, False)
        self._on_stop: list[Callable[[], Awaitable[Any]]] = []
        self.uses_kafka = True

    def lifespan(
        self, wire: Callable[[Any], Awaitable[None]], *, connect: bool = True, **start_options: bool
    ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """A service's lifespan (FastAPI's `lifespan=`): start, then `wire(app)`, then the consumers; stop on exit.

        `wire` is what the service adds of its own: its store on `app.state`, its consumers' appliers,
        its loops (`add_loop`), what to close (`on_stop`). `connect=False` (a test's fakes) starts no
        Postgres and no Kafka; `wire` still runs, as do the loops it adds. `start_options` go to `start`.
        """

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            app.state.settings = self.settings
            if connect:
                await self.start(**start_options)
            try:
                await wire(app)
                await self.start_consumers()
                gc_tuning.settle()  # what startup built is frozen out of later collections (a tuned process only)
                yield
            finally:
                await self.stop()

        return lifespan

    def on_stop(self, close: Callable[[], Awaitable[Any]]) -> None:
        """Run `close` at `stop`: after the consumers and loops stopped, before the producer and the pool
        close (so what it flushes may still use them); the last registered runs first."""
        self._on_stop.append(close)

    async def start(self, *, with_producer: bool = True, uses_kafka: bool = True) -> None:
        """Connect to Postgres, apply this schema's migrations, create topics, start the producer.

        `uses_kafka=False` (the assigner's HTTP-only process): no topics, no producer, and readiness
        does not depend on Kafka.
        """
        self.uses_kafka = uses_kafka
        s = self.settings
        self.pool = await _retry(
            "postgres",
            lambda: db.create_pool(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max, app=self.service),
        )
        async with self.pool.acquire() as conn:
            applied = await migrations.apply(conn, self.schema, self.migrations_dir)
        if applied:
            log.info("migrations applied", extra={"schema": self.schema, "count": len(applied)})
        if not uses_kafka:
            return
        await _retry("kafka topics", lambda: ensure_topics(s))
        if with_producer:  # the broker's producer: `broker.connect()` starts it (and the admin client)
            self.producer = broker_producer(self.broker)
            await _retry("kafka producer", self.broker.connect)

    def add_consumer(self, consumer: BatchConsumer) -> BatchConsumer:
        """Register a consumer to be started by `start_background` and stopped by `stop`."""
        self.consumers.append(consumer)
        return consumer

    def consume(self, group_id: str, topics: Sequence[str], apply=None, **options) -> BatchConsumer:
        """Declare a batch consumer of `topics` on this runtime's broker, with this schema's event ids.

        Declared in the service's wiring (so the AsyncAPI document shows it before anything runs);
        its applier may be bound later, once the lifespan built what it needs (`BatchConsumer.bind`).
        Unless bound to a pool of its own, it applies on the runtime's.
        """
        return self.add_consumer(
            BatchConsumer(
                settings=self.settings,
                broker=self.broker,
                group_id=group_id,
                topics=topics,
                tracker=EventIds(self.schema),
                apply=apply,
                **options,
            )
        )

    def add_loop(self, name: str, factory: Callable[[], Awaitable[None]], backoff: Backoff | None = None) -> None:
        """Run a background loop until `stop`; a crash is logged and the loop restarted after the backoff.

        A loop that keeps crashing for longer than SWITCHBOARD_CONSUMER_STALL_S (or whose task is
        gone) turns readiness red under `loop:<name>`.
        """
        backoff = self._loop_backoffs[name] = backoff or Backoff(f"loop {name}", base=0.5, cap=30.0)

        async def supervised():
            while True:
                run = asyncio.ensure_future(factory())
                try:
                    done, _ = await asyncio.wait({run}, timeout=LOOP_RECOVERED_AFTER_S)
                    if not done:
                        backoff.reset()
                    await run
                    return
                except asyncio.CancelledError:
                    run.cancel()
                    await asyncio.gather(run, return_exceptions=True)
                    raise
                except Exception:
                    log.exception("background loop crashed; restarting", extra={"loop": name})
                    await backoff.wait()

        self._loops.append(asyncio.create_task(supervised(), name=name))

    def add_pruner(self, jobs: list[PruneJob], pool: asyncpg.Pool | None = None) -> Pruner:
        """Run the service's retention jobs every SWITCHBOARD_RETENTION_INTERVAL_S as loop `retention`."""
        s = self.settings
        pruner = Pruner(pool or self.pool, jobs, batch_size=s.retention_batch_size, interval_s=s.retention_interval_s)
        self.add_loop("retention", pruner.run)
        return pruner

    async def start_consumers(self) -> None:
        """Join every registered consumer group."""
        for consumer in self.consumers:
            if consumer.pool is None:
                consumer.pool = self.pool
            await _retry("consumer join", consumer.start)

    async def stop(self) -> None:
        """Finish in-flight batches, commit, and close everything."""
        for consumer in self.consumers:
            await consumer.stop()
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            try:  # bounded: a loop stuck in a cancelled query or send must not hold shutdown
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                log.warning("background loop did not stop within 10 s", extra={"loop": task.get_name()})
            except (asyncio.CancelledError, Exception):
                pass
        for close in reversed(self._on_stop):
            try:
                await close()
            except Exception:
                log.exception("closing a part of the service failed")
        self._on_stop.clear()
        if self.producer:
            try:  # the broker's producer flushes what is queued (and its admin client closes); bounded
                await asyncio.wait_for(self.broker.stop(), 20)
            except Exception as exc:
                log.warning("producer did not stop cleanly", extra={"error": repr(exc)})
        if self.pool:
            try:
                await asyncio.wait_for(self.pool.close(), 10)
            except TimeoutError:
                self.pool.terminate()

    async def readiness(self) -> dict[str, bool]:
        """Kafka and Postgres reachable, migrations applied, consumers alive."""
        checks = {"postgres": False, "migrations": False}
        if self.pool and await db.ping(self.pool):
            checks["postgres"] = True
            try:
                async with self.pool.acquire(timeout=2) as conn:
                    checks["migrations"] = not await migrations.pending(conn, self.schema, self.migrations_dir)
            except Exception:
                pass
        if self.uses_kafka:
            checks["kafka"] = await self._kafka_ok()
        if self.consumers:
            # One entry per group, so the body names the one that is failing.
            for consumer in self.consumers:
                checks[f"consumer:{consumer.group_id}"] = consumer.healthy
            checks["consumers"] = all(c.healthy for c in self.consumers)
        stall_s = self.settings.consumer_stall_s
        for task in self._loops:
            backoff = self._loop_backoffs[task.get_name()]
            checks[f"loop:{task.get_name()}"] = not task.done() and backoff.failing_for() < stall_s
        return checks

    async def _kafka_ok(self) -> bool:
        at, ok = self._kafka_checked
        if time.monotonic() - at < 1.0:
            return ok
        ok = await kafka_ready(self.settings.kafka_bootstrap_servers, timeout_s=2)
        self._kafka_checked = (time.monotonic(), ok)
        return ok


async def _retry(what: str, attempt: Callable[[], Awaitable], tries: int = STARTUP_TRIES):
    """Startup connections: up to `tries` attempts through the shared backoff, then the error."""
    return await retrying(what, attempt, tries=tries, backoff=Backoff(what, base=0.2, cap=5.0))
