"""Ingest: frontends post user and operator messages over HTTP; ingest publishes them to chat.inbound."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from services.ingest import api, handlers
from services.ingest.domain import MAX_BATCH_BYTES
from services.ingest.publisher import Publisher
from services.ingest.store import QUERIES, Store
from shared.auth import jwks_verifier
from shared.http import create_app as create_http_app
from shared.retention import PruneJob
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"


def create_app(settings: Settings) -> FastAPI:
    """Wire ingest: the idempotency store in Postgres, the chat.inbound publisher, the HTTP API."""
    runtime = Runtime(settings, "ingest", SCHEMA, MIGRATIONS)
    publisher = Publisher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The publisher owns its producer: it replaces it when aiokafka cannot recover by itself.
        await runtime.start(with_producer=False)
        await publisher.start()
        app.state.store = Store(runtime.pool)
        app.state.publisher = publisher
        app.state.coalescer = handlers.Coalescer(app.state)
        app.state.coalescer.start()
        # Acknowledged keys past the dedup window go; a message id sent again after that is a new event
        # to ingest, and the assigner still stores the message once (it knows every message id it stored).
        app.state.pruner = runtime.add_pruner([PruneJob("ingest.message_keys", QUERIES.prune_acked_keys,
                                                        timedelta(seconds=settings.dedup_window_s))])
        yield
        await app.state.coalescer.stop()
        await publisher.stop()
        await runtime.stop()

    # Per-route limits are enforced while reading the body; this is the largest (a full batch).
    app = create_http_app("ingest", title="Switchboard ingest", lifespan=lifespan,
                          readiness=runtime.readiness, auth_secret=settings.auth_secret,
                          jwks=jwks_verifier(settings),
                          max_body_bytes=MAX_BATCH_BYTES)
    app.state.settings = settings
    app.include_router(api.router)
    return app
