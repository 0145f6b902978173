"""Idle monitor: arms a deadline per assignment from `chat.lifecycle`; fires `assignment_idle` on `chat.timeouts`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.idle_monitor import api, handlers
from services.idle_monitor.store import Store
from shared.events import TOPIC_LIFECYCLE, TOPIC_TIMEOUTS
from shared.http import service_app
from shared.kafka.consumer import LIFECYCLE_FETCH_MIN_BYTES
from shared.kafka.publishers import declare
from shared.runtime import Runtime
from shared.settings import Settings

SCHEMA = "idle_monitor"
MIGRATIONS = Path(__file__).parent / "sql" / "migrations"
GROUP_ID = "idle_monitor"


def bootstrap(settings: Settings, *, store: Store | None = None) -> FastAPI:
    """Wire the idle monitor in one place: Postgres store, lifecycle consumer, deadline ticker, retention, HTTP API.

    With settings alone (production) all of it runs on Postgres and Kafka. A `store` passed in (a
    test's fake) serves the HTTP API alone: no Postgres, no Kafka, no consumer, no ticker.
    """
    runtime = Runtime(settings, "idle_monitor", SCHEMA, MIGRATIONS)
    timeouts = declare(runtime.broker, settings, TOPIC_TIMEOUTS)
    consumer = None
    if store is None:
        consumer = runtime.consume(
            GROUP_ID,
            [TOPIC_LIFECYCLE],
            after_commit=handlers.after_commit,
            wanted_types=handlers.WANTED_TYPES,
            fetch_min_bytes=LIFECYCLE_FETCH_MIN_BYTES,
        )
    tickers: list[handlers.Ticker] = []

    async def readiness() -> dict[str, bool]:
        """The shared checks plus the ticker's: it must keep completing rounds."""
        checks = await runtime.readiness()
        checks["ticker"] = bool(tickers) and all(t.healthy for t in tickers)
        return checks

    async def wire(app: FastAPI) -> None:
        if store is not None:
            app.state.store = store
            return
        live = Store(runtime.pool)
        app.state.store = live
        assert consumer is not None
        app.state.consumer = consumer.bind(handlers.make_apply(live, settings))
        ticker = handlers.Ticker(live, timeouts, settings)
        app.state.ticker = ticker
        tickers.append(ticker)
        runtime.add_loop("idle-ticker", ticker.run)
        app.state.pruner = runtime.add_pruner(live.retention_jobs(settings))

    app = service_app(
        "idle_monitor",
        settings,
        title="Switchboard idle monitor",
        lifespan=runtime.lifespan(wire, connect=store is None),
        readiness=readiness,
        broker=runtime.broker,
        routers=(api.router,),
    )
    return app


def create_app(settings: Settings) -> FastAPI:
    """The production app, as `switchboard run idle_monitor` serves it."""
    return bootstrap(settings)
