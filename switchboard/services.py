"""The services, by name: where their code, schema and migrations are, and how each declares its Kafka side."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

    from shared.settings import Settings

NAMES = ("ingest", "assigner", "idle_monitor", "stats", "delivery")

# The processes `switchboard up` and the benchmark start, with the service each runs and the settings
# it gets. The assigner runs as three: its HTTP API, its worker (the inbound/timeouts consumer) and
# its relay (the outbox relay, the queue gauges and retention), so a consumer batch never holds up an
# operator's pull and a relay round never lengthens a consumer batch's cycle.
# `switchboard run assigner` on its own still does everything (SWITCHBOARD_ASSIGNER_MODE=all).
PROCESSES = {
    "ingest": ("ingest", {}),
    "assigner": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "api"}),
    "assigner_worker": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "worker"}),
    "assigner_relay": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "relay"}),
    "idle_monitor": ("idle_monitor", {}),
    "stats": ("stats", {}),
    "delivery": ("delivery", {}),
}
ROOT = Path(__file__).resolve().parents[1] / "services"


def module(name: str):
    """The service's `main` module (it exposes `create_app(settings)`, `SCHEMA`, `MIGRATIONS`)."""
    if name not in NAMES:
        raise ValueError(f"unknown service {name!r}; choose from {', '.join(NAMES)}")
    return importlib.import_module(f"services.{name}.main")


def schema(name: str) -> str:
    """The Postgres schema a service owns (named after it)."""
    return name


def has_migrations(name: str) -> bool:
    """True when the service ships at least one migration."""
    return any(migrations_dir(name).glob("*.sql"))


def migrations_dir(name: str) -> Path:
    """The folder of a service's numbered migrations."""
    return ROOT / name / "sql" / "migrations"


def broker_factory(name: str) -> Callable[[Settings], KafkaBroker]:
    """A function that declares the service's Kafka subscribers and publishers on a fresh broker, without connecting.

    `switchboard asyncapi` generates the system's document from these (shared.asyncapi.system_document).
    """
    # Every service's wiring (`bootstrap`) declares its subscribers and publishers on its broker
    # before anything starts, so the app as `create_app` builds it is the declaration; nothing
    # connects. The assigner in mode `all` declares both of its processes' sides.

    def from_app(settings: Settings) -> KafkaBroker:
        app = module(name).create_app(settings.model_copy(update={"assigner_mode": "all"}))
        return app.state.broker

    return from_app
