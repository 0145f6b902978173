"""Delivery's poll statements against the real Postgres: numbering, one NOTIFY per poll, depths to every listener."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from services.delivery import domain, store, streams
from shared.events import utcnow
from tests.harness import eventually


def event(stream: str, text: str) -> domain.StreamEvent:
    return domain.StreamEvent(stream, uuid.uuid4(), "message", utcnow(), {"text": text})


@contextlib.asynccontextmanager
async def listening(database_url: str):
    """A delivery hub with its LISTEN connection up."""
    hub = streams.Hub(database_url)
    task = asyncio.create_task(hub.listen())
    try:
        await eventually(lambda: _ready(hub))
        yield hub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _ready(hub):
    return hub.connected.is_set()


async def test_a_poll_numbers_each_stream_in_order_and_wakes_every_stream_past_the_notify_size_limit(env):
    operators = [f"{'o' * 240}-{i:02d}" for i in range(40)]  # 40 keys of ~250 bytes: more than one NOTIFY
    keys = [domain.operator_stream(op) for op in operators] + ["chat:a"]
    conn = await env.connect()
    raw = await env.connect()
    payloads: list[str] = []
    try:
        await raw.add_listener(streams.CHANNEL, lambda *args: payloads.append(args[3]))
        async with listening(env.database_url) as hub:
            wakes = {key: hub.subscribe(key) for key in keys}
            for w in wakes.values():
                w.events = False
            for poll in range(2):
                events = [event("chat:a", f"a{poll}-1")]
                events += [event(key, f"{poll}") for key in keys[:-1]]
                events.append(event("chat:a", f"a{poll}-2"))
                async with conn.transaction():
                    assert await store.append(conn, events) == 42
            await eventually(lambda: _all_set(wakes))
        seqs = await conn.fetch(
            "SELECT seq, data->>'text' AS text FROM delivery.stream_events WHERE stream = 'chat:a' ORDER BY seq"
        )
        assert [(r["seq"], r["text"]) for r in seqs] == [(1, "a0-1"), (2, "a0-2"), (3, "a1-1"), (4, "a1-2")]
        assert await conn.fetchval(
            "SELECT array_agg(DISTINCT seq ORDER BY seq) FROM delivery.stream_events WHERE stream LIKE 'operator:%'"
        ) == [1, 2]
        await eventually(lambda: _len_at_least(payloads, 4))
        assert len(payloads) == 4, "more than the chunks the size limit needs"  # 2 polls x 2 chunks
        assert sorted(k for p in payloads[:2] for k in p.split("\n")) == sorted(keys)
    finally:
        await conn.close()
        await raw.close()


async def test_depth_changes_reach_every_listener_and_a_new_listener_loads_the_current_counts(env):
    conn = await env.connect()
    try:
        async with listening(env.database_url) as one:
            w = one.subscribe("operator:op-1", ["default", "sales"])
            w.depth = False
            async with conn.transaction():
                moves = domain.QueueMoves(
                    chats={"a": "default", "b": "sales", "c": "sales"}, deltas={"default": 1, "sales": 2}
                )
                await store.save_chat_state(conn, {}, moves)
            await eventually(lambda: _flag(w))
            assert (one.depth("default"), one.depth("sales"), one.depth("nowhere")) == (1, 2, 0)
            async with conn.transaction():
                moves = domain.QueueMoves(chats={"b": None, "c": "default"}, deltas={"default": 1, "sales": -2})
                await store.save_chat_state(conn, {}, moves)
            await eventually(lambda: _is(one.depth("sales"), 0))
            assert one.depth("default") == 2
            # A stale count (an older version, e.g. a notification overtaken by a load) is ignored.
            one.set_depths([("default", 7, 1)])
            assert one.depth("default") == 2
            async with listening(env.database_url) as two:
                assert (two.depth("default"), two.depth("sales")) == (2, 0)
        rows = await conn.fetch("SELECT chat_id, queue_id FROM delivery.waiting_chats ORDER BY chat_id")
        assert [(r["chat_id"], r["queue_id"]) for r in rows] == [("a", "default"), ("c", "default")]
    finally:
        await conn.close()


async def _all_set(wakes):
    return all(w.events and w.event.is_set() for w in wakes.values())


async def _len_at_least(items, n):
    return len(items) >= n


async def _flag(wake):
    return wake.depth and wake.event.is_set()


async def _is(value, expected):
    return value == expected
