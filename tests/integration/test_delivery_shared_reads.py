"""The hub's shared reads against the real Postgres: one read per notification serves every stream it names.

Each reader still gets every event once, in order, with no gap, whether its rows came from its own
read (the replay, a full page) or from the hub's read for the whole notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from services.delivery import domain, store, streams
from shared import db
from shared.events import utcnow
from tests.harness import eventually

STREAMS = ["chat:shared-a", "chat:shared-b", "operator:shared-op"]


def reads(kind: str) -> float:
    return streams.STREAM_READS.labels(kind)._value.get()


@contextlib.asynccontextmanager
async def hub_with_store(database_url: str):
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    st = store.Store(pool)
    hub = streams.Hub(database_url)
    hub.read_with(st)
    task = asyncio.create_task(hub.listen())
    try:
        await eventually(lambda: _ready(hub))
        yield hub, st
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def _ready(hub):
    return hub.connected.is_set()


async def read(hub, st, stream: str, n: int, got: dict) -> None:
    async for sse in streams.stream_events(hub, st, stream, 0):
        got[stream].append((int(sse.id), json.loads(sse.data)["text"]))
        if len(got[stream]) >= n:
            return


async def append_polls(conn, polls: int, per_poll: int) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {s: [] for s in STREAMS}
    for poll in range(polls):
        events = []
        for i in range(per_poll):
            for s in STREAMS:
                text = f"{s}-{poll}-{i}"
                sent[s].append(text)
                events.append(domain.StreamEvent(s, uuid.uuid4(), "message", utcnow(), {"text": text}))
        async with conn.transaction():
            await store.append(conn, events)
    return sent


async def test_one_read_per_notification_gives_every_stream_its_events_once_in_order(env):
    conn = await env.connect()
    try:
        async with hub_with_store(env.database_url) as (hub, st):
            own, shared = reads("own"), reads("shared")
            got: dict[str, list] = {s: [] for s in STREAMS}
            readers = [asyncio.create_task(read(hub, st, s, 6 * 2, got)) for s in STREAMS]
            await eventually(lambda: _subscribed(hub))
            sent = await append_polls(conn, polls=6, per_poll=2)
            await asyncio.wait_for(asyncio.gather(*readers), 20)
        for s in STREAMS:
            assert got[s] == list(enumerate(sent[s], start=1)), s
        assert reads("own") - own == len(STREAMS)  # each stream's replay; every later event came shared
        assert 1 <= reads("shared") - shared <= 6  # at most one per committed poll (NOTIFYs may fold)
    finally:
        await conn.close()


async def test_a_shared_read_that_fills_a_page_leaves_the_rest_to_the_streams_own_reads(env, monkeypatch):
    monkeypatch.setattr(streams, "PAGE", 2)  # the shared read's limit per stream
    conn = await env.connect()
    try:
        async with hub_with_store(env.database_url) as (hub, st):
            own = reads("own")
            got: dict[str, list] = {s: [] for s in STREAMS}
            readers = [asyncio.create_task(read(hub, st, s, 5, got)) for s in STREAMS]
            await eventually(lambda: _subscribed(hub))
            sent = await append_polls(conn, polls=1, per_poll=5)
            await asyncio.wait_for(asyncio.gather(*readers), 20)
        for s in STREAMS:
            assert got[s] == list(enumerate(sent[s], start=1)), s
        assert reads("own") - own >= 2 * len(STREAMS)  # the replay, then the page the shared read cut
    finally:
        await conn.close()


async def _subscribed(hub):
    # every reader registered and past its replay read (nothing pending for it)
    return all(s in hub._waiters and all(not w.events for w in hub._waiters[s]) for s in STREAMS)
