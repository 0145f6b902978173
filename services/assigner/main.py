"""Assigner: owns chat state; consumes chat.inbound and chat.timeouts; serves operators and admins."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.assigner import api, handlers
from services.assigner.batcher import OperatorBatcher
from services.assigner.outbox import OutboxRelay
from services.assigner.store import Store
from shared.auth import jwks_verifier
from shared.events import TOPIC_INBOUND, TOPIC_TIMEOUTS
from shared.http import create_app as create_http_app
from shared.kafka import BatchConsumer
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tracking import EventIds

SCHEMA = "assigner"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"
GROUP_ID = "assigner"


def create_app(settings: Settings) -> FastAPI:
    """Wire the assigner: Postgres store, inbound/timeouts consumer, outbox relay, HTTP API.

    SWITCHBOARD_ASSIGNER_MODE splits it: `api` serves HTTP only, `worker` runs the consumer, the
    relay, the gauges and the retention loop (its HTTP port still answers /healthz, /readyz and /metrics).
    """
    runtime = Runtime(settings, "assigner", SCHEMA, MIGRATIONS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start(uses_kafka=settings.assigner_mode != "api")
        store = Store(runtime.pool, settings)
        app.state.store = store
        batcher = OperatorBatcher(store)
        app.state.batcher = batcher
        runtime.add_loop("operator-batches", batcher.run)
        app.state.settings = settings
        if settings.assigner_mode in ("all", "worker"):
            runtime.add_consumer(BatchConsumer(
                settings=settings, pool=runtime.pool, producer=runtime.producer, group_id=GROUP_ID,
                topics=[TOPIC_INBOUND, TOPIC_TIMEOUTS], tracker=EventIds(SCHEMA),
                apply=handlers.make_apply(store), after_commit=handlers.after_commit,
            ))
            relay = OutboxRelay(runtime.pool, runtime.producer, settings, store.q)
            runtime.add_loop("outbox-relay", relay.run)
            runtime.add_loop("queue-gauges", lambda: handlers.export_gauges(store))
            app.state.pruner = runtime.add_pruner(store.retention_jobs())
        await runtime.start_consumers()
        yield
        await runtime.stop()

    app = create_http_app("assigner", title="Switchboard assigner", lifespan=lifespan,
                          readiness=runtime.readiness, auth_secret=settings.auth_secret,
                          jwks=jwks_verifier(settings))
    app.include_router(api.router)
    api.mount_console(app)
    return app
