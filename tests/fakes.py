"""In-memory stand-ins for the services' adapters, and apps built over them with each service's `bootstrap`.

An app built here reaches neither Kafka nor Postgres: the unit tests of validation and auth run on
it. A fake keeps the contract its real adapter states (ingest's idempotency keys answer as the
table does) or, where a test must prove that the adapter is never reached, records every call.
"""

from __future__ import annotations

import contextlib
from datetime import date
from typing import Any

import httpx
from fastapi import FastAPI

from services.ingest.domain import Claim, Draft, Key
from services.stats.store import zero_queue
from shared.settings import Settings
from switchboard import services as registry
from tests.harness import BoundedASGITransport, make_settings


def unit_settings(**overrides) -> Settings:
    """Settings whose database and broker are never contacted (the apps below get fakes instead)."""
    return make_settings("postgresql://unused@127.0.0.1:1/unused", "unit.", **overrides)


class IngestStore:
    """Ingest's idempotency keys in a dict: the first claim of a key wins, a later one reads it back."""

    def __init__(self):
        self.claims: dict[Key, Claim] = {}

    async def claim(self, drafts: list[Draft]) -> dict[Key, Claim]:
        """Insert the drafts' keys that are new; return every key's claim (new, or as stored before)."""
        for d in drafts:
            self.claims.setdefault(d.key, Claim(d.key, d.event_id, d.envelope, acked=False))
        return {d.key: self.claims[d.key] for d in drafts}

    async def mark_acked(self, keys: list[Key]) -> set[Key]:
        """Record the acks; returns the keys this call marked first."""
        first = set()
        for key in keys:
            claim = self.claims[key]
            if not claim.acked:
                self.claims[key] = Claim(key, claim.event_id, claim.envelope, acked=True)
                first.add(key)
        return first


class IngestPublisher:
    """Ingest's publisher that acknowledges every record and keeps it, in order, for the test to read."""

    def __init__(self):
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, records: list[tuple[str, bytes]]) -> list[BaseException | None]:
        """Keep the (chat_id, value) records; none fails."""
        self.published.extend(records)
        return [None] * len(records)


class Untouched:
    """An adapter a test expects never to be reached: any use is recorded in `reached` and fails the request."""

    def __init__(self, name: str):
        self.name = name
        self.reached: list[str] = []

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        self.__dict__.setdefault("reached", []).append(attr)
        raise AssertionError(f"the {self.__dict__.get('name', 'adapter')} was reached ({attr}) but must not be")


class StatsStore:
    """Stats' reads over figures a test puts in `operators` (keyed by operator id, the same for any day)."""

    def __init__(self, operators: dict[str, dict] | None = None, queues: dict[tuple[str, date], dict] | None = None):
        self.operators_by_id = operators or {}
        self.queues_by_day = queues or {}  # (queue_id, day) -> a queue_daily row's counters
        self.days: list[date | None] = []

    async def operator(self, operator_id: str, day: date | None) -> dict:
        """The operator's stored figures; the day asked for is recorded in `days`."""
        self.days.append(day)
        return {"operator_id": operator_id, **self.operators_by_id[operator_id]}

    async def operators(self, day: date | None, limit: int, after: str | None = None) -> tuple[list[dict], str | None]:
        """One page of the stored operators, sorted by id; the day asked for is recorded in `days`."""
        self.days.append(day)
        ids = sorted(i for i in self.operators_by_id if after is None or i > after)
        page = [{"operator_id": i, **self.operators_by_id[i]} for i in ids[:limit]]
        return page, (page[-1]["operator_id"] if len(ids) > limit else None)

    async def queue(self, queue_id: str, day: date) -> dict:
        """The queue's stored figures on the day, zeros when none; the day is recorded in `days`."""
        self.days.append(day)
        row = self.queues_by_day.get((queue_id, day))
        return {"queue_id": queue_id, "day": day, **row} if row else zero_queue(queue_id, day)

    async def queues(self, day: date, limit: int, after: str | None = None) -> tuple[list[dict], str | None]:
        """One page of the queues stored for the day, sorted by id; the day is recorded in `days`."""
        self.days.append(day)
        ids = sorted(q for q, d in self.queues_by_day if d == day and (after is None or q > after))
        page = [{"queue_id": q, "day": day, **self.queues_by_day[(q, day)]} for q in ids[:limit]]
        return page, (page[-1]["queue_id"] if len(ids) > limit else None)


def build(service: str, settings: Settings | None = None, **fakes) -> FastAPI:
    """The service's app from its `bootstrap`, with fakes; every adapter not given is an `Untouched` one."""
    settings = settings or unit_settings()
    module = registry.module(service)
    defaults: dict[str, Any] = {
        "ingest": {"store": Untouched("ingest store"), "publisher": Untouched("ingest publisher")},
        "assigner": {"store": Untouched("assigner store"), "batcher": Untouched("assigner batcher")},
        "idle_monitor": {"store": Untouched("idle monitor store")},
        "stats": {"store": Untouched("stats store")},
    }[service]
    return module.bootstrap(settings, **{**defaults, **fakes})


@contextlib.asynccontextmanager
async def serving(app: FastAPI, name: str = "app"):
    """Run an app's lifespan and yield an in-process HTTP client to it."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=BoundedASGITransport(app=app), base_url=f"http://{name}") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
