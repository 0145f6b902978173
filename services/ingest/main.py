"""Ingest: frontends post user and operator messages over HTTP; ingest publishes them to chat.inbound."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from services.ingest import api, handlers
from services.ingest.domain import MAX_BATCH_BYTES
from services.ingest.publisher import Publisher
from services.ingest.store import QUERIES, Store
from shared.http import service_app
from shared.retention import PruneJob
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"


def bootstrap(settings: Settings, *, store: Store | None = None, publisher: Publisher | None = None) -> FastAPI:
    """Wire ingest in one place: the idempotency store, the chat.inbound publisher, the coalescer, the HTTP API.

    With settings alone (production) the store is built on a Postgres pool at startup, with its
    retention loop, and the publisher sends through the runtime's broker (its producer). A `store` or `publisher` passed in (the
    fakes of tests/fakes.py) is used as it is and never started or stopped here; with a store passed
    in, no Postgres is reached and no topic is created.
    """
    runtime = Runtime(settings, "ingest", SCHEMA, MIGRATIONS)
    owns_publisher = publisher is None
    live_publisher = publisher if publisher is not None else Publisher(settings, runtime.broker)

    async def wire(app: FastAPI) -> None:
        state = app.state
        if store is None:
            state.store = Store(runtime.pool)
            # Acknowledged keys past the dedup window go; a message id sent again after that is a new event
            # to ingest, and the assigner still stores the message once (it knows every message id it stored).
            state.pruner = runtime.add_pruner(
                [PruneJob("ingest.message_keys", QUERIES.prune_acked_keys, timedelta(seconds=settings.dedup_window_s))]
            )
        else:
            state.store = store
        if owns_publisher:
            await live_publisher.start()
            runtime.on_stop(live_publisher.stop)
        # The API and the coalescer read `store` and `publisher` from app.state on every request or
        # round, so a test may swap the publisher of a running app.
        state.publisher = live_publisher
        state.coalescer = handlers.Coalescer(state)
        state.coalescer.start()
        runtime.on_stop(state.coalescer.stop)  # before the publisher's: the last rounds still publish

    # Per-route limits are enforced while reading the body; this is the largest (a full batch).
    app = service_app(
        "ingest",
        settings,
        title="Switchboard ingest",
        # The publisher connects the broker's producer itself: Kafka may be down at startup,
        # and then the first publish starts a producer.
        lifespan=runtime.lifespan(wire, connect=store is None, with_producer=False),
        readiness=runtime.readiness,
        broker=runtime.broker,
        routers=(api.router,),
        hot_routes=api.HOT_ROUTES,
        max_body_bytes=MAX_BATCH_BYTES,
    )
    return app


def create_app(settings: Settings) -> FastAPI:
    """The production app, as `switchboard run ingest` serves it."""
    return bootstrap(settings)
