"""Assigner: owns chat state; consumes chat.inbound and chat.timeouts; serves operators and admins."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.assigner import api, handlers, routing_api
from services.assigner.batcher import OperatorBatcher
from services.assigner.outbox import OutboxRelay
from services.assigner.repository import QUERIES
from services.assigner.routing_usecases import RoutingCommands
from services.assigner.usecases import Assigner
from shared.events import TOPIC_INBOUND, TOPIC_LIFECYCLE, TOPIC_TIMEOUTS
from shared.http import service_app
from shared.kafka.publishers import declare
from shared.retention import Pruner
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "assigner"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"
GROUP_ID = "assigner"


def bootstrap(settings: Settings, *, store: Assigner | None = None, batcher: OperatorBatcher | None = None) -> FastAPI:
    """Wire the assigner in one place: use cases over Postgres, inbound/timeouts consumer, outbox relay, HTTP API.

    SWITCHBOARD_ASSIGNER_MODE splits it: `api` serves HTTP only, `worker` runs the consumer, `relay`
    the outbox relay, the gauges and the retention loop (the last two ports still answer /healthz,
    /readyz and /metrics). The relay has a process of its own because its rounds, in the worker's
    event loop, lengthened every consumer batch's cycle, and with it apply latency
    (docs/performance.md, fourteenth session).

    With settings alone (production) the store is built on a Postgres pool at startup. A `store`
    passed in (a test's fake: any object with the methods the API calls) serves the HTTP API alone,
    whatever the mode: no Postgres, no Kafka, no consumer or relay. `batcher` replaces the operators'
    batcher (by default one over the store, run until shutdown).
    """
    runtime = Runtime(settings, "assigner", SCHEMA, MIGRATIONS)
    mode = settings.assigner_mode
    worker = mode in ("all", "worker") and store is None
    # The outbox relay's publisher, declared in the wiring (before the broker starts) whenever this
    # mode relays, so the process's AsyncAPI document names it even over a test's fake store.
    lifecycle = declare(runtime.broker, settings, TOPIC_LIFECYCLE) if mode in ("all", "relay") else None
    inbound = None
    relays: list[OutboxRelay] = []  # the relay of this process, if any (woken after each of its commits)
    if worker:
        inbound = runtime.consume(
            GROUP_ID,
            [TOPIC_INBOUND, TOPIC_TIMEOUTS],
            after_commit=lambda changes: handlers.after_commit(changes, relays),
        )

    async def wire(app: FastAPI) -> None:
        live = store if store is not None else Assigner(runtime.pool, settings)
        app.state.assigner = live
        # Over a test's fake store the routing routes are not served (their commands need the pool).
        app.state.routing = RoutingCommands(live) if isinstance(live, Assigner) else None
        app.state.batcher = batcher if batcher is not None else OperatorBatcher(live)
        if batcher is None:
            runtime.add_loop("operator-batches", app.state.batcher.run)
        if inbound is not None:
            inbound.bind(handlers.make_apply(live))
        if lifecycle is not None and store is None:
            app.state.pruner = _start_relay(settings, runtime, live, lifecycle, relays)

    app = service_app(
        "assigner",
        settings,
        title="Switchboard assigner",
        lifespan=runtime.lifespan(wire, connect=store is None, uses_kafka=mode != "api"),
        readiness=runtime.readiness,
        broker=runtime.broker,
        routers=(api.router, routing_api.router),
        hot_routes=api.HOT_ROUTES,
    )
    api.mount_console(app)
    return app


def _start_relay(
    settings: Settings,
    runtime: Runtime,
    store: Assigner,
    lifecycle: DefaultPublisher,
    relays: list[OutboxRelay],
) -> Pruner:
    """Start the relay's parts: the outbox relay, the queue gauges, retention (its pruner)."""
    relay = OutboxRelay(runtime.pool, lifecycle, settings, QUERIES)
    relays.append(relay)
    runtime.add_loop("outbox-relay", relay.run)
    runtime.add_loop("queue-gauges", lambda: handlers.export_gauges(store))
    return runtime.add_pruner(store.retention_jobs())


def create_app(settings: Settings) -> FastAPI:
    """The production app, as `switchboard run assigner` serves it (in SWITCHBOARD_ASSIGNER_MODE)."""
    return bootstrap(settings)
