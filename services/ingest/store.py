"""Postgres side of ingest: the idempotency keys that make every retry return the same event."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from services.ingest.domain import Claim, Draft, Key
from shared.db import Queries

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")


class Store:
    """The `ingest.message_keys` table; each call is one autocommitted statement."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.q = QUERIES

    async def claim(self, drafts: list[Draft]) -> dict[Key, Claim]:
        """Insert the drafts' keys that are new; return every key's claim (new, or as stored before)."""
        ordered = sorted(drafts, key=lambda d: (d.key.chat_id, d.key.message_id))  # one lock order
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                self.q.claim_keys,
                [d.key.chat_id for d in ordered],
                [d.key.message_id for d in ordered],
                [d.event_id for d in ordered],
                [d.envelope.decode() for d in ordered],
            )
            inserted = {Key(r["chat_id"], r["message_id"]) for r in rows}
            claims = {d.key: Claim(d.key, d.event_id, d.envelope, acked=False) for d in ordered if d.key in inserted}
            known = [d.key for d in ordered if d.key not in inserted]
            if known:
                # A new statement, so a snapshot that sees the rows whose insert we collided with.
                for r in await conn.fetch(self.q.read_keys, [k.chat_id for k in known], [k.message_id for k in known]):
                    key = Key(r["chat_id"], r["message_id"])
                    envelope = r["envelope"].encode() if r["envelope"] is not None else None
                    claims[key] = Claim(key, r["event_id"], envelope, acked=r["acked"])
        missing = [d.key for d in ordered if d.key not in claims]
        if missing:
            raise RuntimeError(f"idempotency keys neither inserted nor found: {missing[:3]}")
        return claims

    async def mark_acked(self, keys: list[Key]) -> set[Key]:
        """Record that Kafka acknowledged these keys' records; returns the keys this call marked first."""
        if not keys:
            return set()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.q.mark_acked, [k.chat_id for k in keys], [k.message_id for k in keys])
        return {Key(r["chat_id"], r["message_id"]) for r in rows}
