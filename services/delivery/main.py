"""Delivery: keeps each chat's stream events (from chat.lifecycle) and serves them as Server-Sent Events."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.delivery import api, handlers, store, streams, webhooks, webhooks_api
from shared.events import TOPIC_LIFECYCLE
from shared.http import service_app
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "delivery"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"
# One group for every instance: the replay table is shared and each event is stored once. Each
# instance serves its own streams from that table, woken by Postgres LISTEN/NOTIFY (streams.py).
GROUP_ID = "delivery"


def create_app(settings: Settings) -> FastAPI:
    """Wire delivery: migrations, the chat.lifecycle consumer, the stream listener, the pruner, the HTTP API."""
    runtime = Runtime(settings, "delivery", SCHEMA, MIGRATIONS)
    hub = streams.Hub(settings.database_url)
    # every type: webhooks may want any fact
    consumer = runtime.consume(GROUP_ID, [TOPIC_LIFECYCLE])

    async def readiness() -> dict[str, bool]:
        """The shared checks plus the stream listener's connection."""
        checks = await runtime.readiness()
        checks["listener"] = hub.connected.is_set()
        return checks

    async def wire(app: FastAPI) -> None:
        st = store.Store(runtime.pool)
        app.state.store = st
        app.state.hub = hub
        hub.read_with(st)
        consumer.bind(handlers.make_apply(settings))
        runtime.add_loop("delivery-listen", hub.listen)
        app.state.pruner = runtime.add_pruner(st.retention_jobs(settings))
        runtime.add_loop("delivery-webhooks", webhooks.Sender(settings, runtime.pool).run)

    app = service_app(
        "delivery",
        settings,
        title="Switchboard delivery",
        lifespan=runtime.lifespan(wire),
        readiness=readiness,
        broker=runtime.broker,
        routers=(
            api.router,
            webhooks_api.router,
        ),
    )
    api.mount_widget(app)
    return app
