"""Postgres plumbing: an asyncpg pool with safe session limits and named queries from `.sql` files."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import asyncpg
import asyncpg.pool

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    D = TypeVar("D", bound=DataclassInstance)
else:
    D = TypeVar("D")

# Postgres (or the way to it) is down, restarting or overloaded: answered 503 with Retry-After by
# every API (shared.http), the request may be retried and nothing half-done is visible (every write
# is one transaction). A bug in a query is none of these and surfaces as a 500. OSError covers
# refused connections and timeouts (asyncio.TimeoutError, e.g. BoundedPool's acquire, is one).
DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
    asyncpg.QueryCanceledError,
    OSError,
    asyncio.TimeoutError,
)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SESSION_SETTINGS = {
    # A stuck transaction must never pin the xmin horizon of the queue tables for long.
    "idle_in_transaction_session_timeout": "30000",
    "statement_timeout": "30000",
    "timezone": "UTC",
    # A page read at random costs little more than one read in order when the data is cached or on
    # SSD (Postgres' default, 4, prices a spinning disk). At 4, the plans a session caches for its
    # prepared statements while the tables are still small scan them whole (an `ingest.message_keys`
    # ack then took ever longer as the table grew, 1 -> 12 ms); at 1.1 they probe the indexes
    # whatever the tables' size (tests/integration/test_query_plans.py).
    "random_page_cost": "1.1",
}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: asyncpg has already rolled back any open transaction.

    The default hook also sends `RESET ALL` and friends, one round trip per release; nothing here
    needs it: session settings come from `server_settings`, advisory locks are transaction-scoped
    (the migrator's session lock is released explicitly), and nobody LISTENs on pooled sessions.
    """


ACQUIRE_TIMEOUT_S = 10.0


class BoundedPool(asyncpg.pool.Pool):
    """A pool whose `acquire()` gives up after ACQUIRE_TIMEOUT_S instead of waiting for ever.

    A leaked or stuck connection then surfaces as a TimeoutError (an HTTP 503, a retried consumer
    batch) with a traceback, not as a silent hang.
    """

    def acquire(self, *, timeout: float | None = None):
        return super().acquire(timeout=ACQUIRE_TIMEOUT_S if timeout is None else timeout)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    app: str = "switchboard",
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool whose sessions carry Switchboard's timeouts and an application name."""
    settings = dict(SESSION_SETTINGS, application_name=app, **(server_settings or {}))
    extra = {}
    parsed = urlparse(dsn)
    if parsed.hostname in LOOPBACK and "sslmode" not in parsed.query:
        extra["ssl"] = False  # TLS to ourselves only costs CPU; asyncpg would negotiate it by default
    return await BoundedPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        server_settings=settings,
        command_timeout=60,
        reset=_keep_session,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        **extra,
    )


_BLOCK = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    """Named SQL blocks read from a `queries.sql` file (`-- name: x` then a description line)."""

    def __init__(self, path: Path):
        self.path = path
        text = path.read_text()
        self._sql: dict[str, str] = {}
        marks = list(_BLOCK.finditer(text))
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            body = text[mark.end() : end].strip()
            lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
            sql = "\n".join(lines).strip().rstrip(";").strip()
            if not sql:
                raise ValueError(f"{path}: query {mark['name']!r} is empty")
            self._sql[mark["name"]] = sql

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"{self.path} has no query named {name!r}") from None

    def names(self) -> list[str]:
        """Every query name in the file."""
        return sorted(self._sql)


async def ping(pool: asyncpg.Pool) -> bool:
    """True when Postgres answers a trivial query."""
    try:
        async with pool.acquire(timeout=2) as conn:
            return await conn.fetchval("SELECT 1", timeout=2) == 1
    except Exception:
        return False


def from_row(cls: type[D], row: Mapping[str, Any], **convert: Callable[[Any], Any]) -> D:
    """A dataclass from a row (or its JSON): each field from the column of its name.

    A field the row has no column for keeps its default (a query may leave out a join); a column
    no field names is ignored (a query may return more than the dataclass holds). `convert` names
    what a column's value goes through first (`skills=tuple`: an array read as a list).
    """
    columns = set(row.keys())
    values = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in columns}
    return cls(**{name: convert[name](value) if name in convert else value for name, value in values.items()})
