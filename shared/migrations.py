"""Numbered `.sql` migrations per service schema, each applied once and recorded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(directory: Path) -> list[Migration]:
    """The migrations in a folder, in version order; refuses gaps and duplicate versions."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: migration files are named NNNN_verb_object.sql")
        found.append(Migration(int(match["version"]), match["name"], path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"{directory}: migration versions must be 1..N without gaps, got {versions}")
    return found


async def apply(conn: asyncpg.Connection, schema: str, directory: Path) -> list[Migration]:
    """Apply the pending migrations of one schema, each in its own transaction; returns those applied."""
    applied: list[Migration] = []
    # One migrator per schema at a time, even across processes.
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"migrate:{schema}")
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
        for migration in discover(directory):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.path.read_text())
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)',
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"migrate:{schema}")
    return applied


async def pending(conn: asyncpg.Connection, schema: str, directory: Path) -> list[Migration]:
    """Migrations not yet applied (all of them when the schema does not exist yet)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".schema_migrations')
    done = set()
    if exists:
        done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
    return [m for m in discover(directory) if m.version not in done]
