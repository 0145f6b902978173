"""The services, by name: where their code, schema and migrations are."""

from __future__ import annotations

import importlib
from pathlib import Path

NAMES = ("ingest", "assigner", "idle_monitor", "stats", "delivery")

# The processes `switchboard up` and the benchmark start, with the service each runs and the settings
# it gets. The assigner runs as two: its HTTP API and its worker (the inbound/timeouts consumer, the
# outbox relay and the queue gauges), so a consumer batch never holds up an operator's pull.
# `switchboard run assigner` on its own still does everything (SWITCHBOARD_ASSIGNER_MODE=all).
PROCESSES = {
    "ingest": ("ingest", {}),
    "assigner": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "api"}),
    "assigner_worker": ("assigner", {"SWITCHBOARD_ASSIGNER_MODE": "worker"}),
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
