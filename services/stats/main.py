"""Stats: counts chat.lifecycle facts into per-operator and per-chat figures; serves them over HTTP."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.stats import api, handlers
from services.stats import store as stats_store
from shared.events import TOPIC_LIFECYCLE
from shared.http import service_app
from shared.kafka.consumer import LIFECYCLE_FETCH_MIN_BYTES
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "stats"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"
GROUP_ID = "stats"


def bootstrap(settings: Settings, *, store: stats_store.Store | None = None) -> FastAPI:
    """Wire stats in one place: migrations, the chat.lifecycle consumer (group `stats`), retention, the HTTP API.

    With settings alone (production) all of it runs on Postgres and Kafka. A `store` passed in (a
    test's fake) serves the HTTP API alone: no Postgres, no Kafka, no consumer.
    """
    runtime = Runtime(settings, "stats", SCHEMA, MIGRATIONS)
    consumer = None
    if store is None:
        consumer = runtime.consume(GROUP_ID, [TOPIC_LIFECYCLE], fetch_min_bytes=LIFECYCLE_FETCH_MIN_BYTES)

    async def wire(app: FastAPI) -> None:
        if store is not None:
            app.state.store = store
            return
        # Sessions of this pool resolve the unqualified stats queries in the live schema.
        pool = await stats_store.create_pool(settings, SCHEMA)
        runtime.on_stop(pool.close)
        app.state.store = stats_store.Store(pool)
        assert consumer is not None
        consumer.bind(handlers.make_apply(), pool=pool)
        app.state.pruner = runtime.add_pruner(stats_store.retention_jobs(settings), pool)
        app.state.queue_gauges = handlers.QueueGauges(app.state.store)
        runtime.add_loop("queue-gauges", app.state.queue_gauges.run)

    app = service_app(
        "stats",
        settings,
        title="Switchboard stats",
        lifespan=runtime.lifespan(wire, connect=store is None),
        readiness=runtime.readiness,
        broker=runtime.broker,
        routers=(api.router,),
    )
    return app


def create_app(settings: Settings) -> FastAPI:
    """The production app, as `switchboard run stats` serves it."""
    return bootstrap(settings)
