"""Invariants under concurrency and redelivery (docs/contract.md §3), against real Kafka and Postgres."""

import asyncio

from aiokafka import AIOKafkaConsumer

from services.assigner.repository import QUERIES
from shared.events import TOPIC_INBOUND, TOPIC_LIFECYCLE
from tests import harness
from tests.harness import Producer, eventually, running, token, user_message


async def count(env, sql, *args):
    conn = await env.connect()
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def produce_chats(settings, n, prefix="c"):
    chats = [f"{prefix}-{i:05d}" for i in range(n)]
    async with Producer(settings) as kafka:
        await asyncio.gather(*(kafka.send(TOPIC_INBOUND, user_message(c, f"hello {c}")) for c in chats))
    return chats


async def assert_invariants(env, capacity):
    conn = await env.connect()
    try:
        # Invariant 1: assigned <=> operator set <=> exactly one active assignment record.
        broken = await conn.fetchval("""
            SELECT count(*) FROM assigner.chats c
            LEFT JOIN assigner.assignments a ON a.chat_id = c.chat_id AND a.ended_at IS NULL
            WHERE (c.state = 'assigned') <> (a.assignment_id IS NOT NULL)
               OR (c.state = 'assigned' AND (a.assignment_id <> c.assignment_id
                                             OR a.operator_id <> c.assigned_operator_id))""")
        assert broken == 0
        # Invariant 2: never over capacity, at any moment of the history.
        overlap = await conn.fetchval("""
            SELECT coalesce(max(n), 0) FROM (
              SELECT a.assignment_id, count(*) AS n FROM assigner.assignments a
              JOIN assigner.assignments b ON a.operator_id = b.operator_id
               AND b.started_at <= a.started_at
               AND coalesce(b.ended_at, 'infinity') > a.started_at
              GROUP BY a.assignment_id) x""")
        assert overlap <= capacity
    finally:
        await conn.close()


async def test_fifty_operators_pulling_at_once_never_share_a_chat(env):
    settings = env.with_settings(db_pool_max=20)
    chats = await produce_chats(settings, 1000)
    async with running("assigner", settings) as api:
        await eventually(lambda: count(env, "SELECT count(*) = 1000 FROM assigner.chats"), timeout=60)
        got: dict[str, list[str]] = {}

        async def operator(op):
            headers = token(op)
            while True:
                r = await api.post("/v1/assignments/next", headers=headers)
                if r.status_code == 204:
                    return
                assert r.status_code == 200, r.text
                body = r.json()
                got.setdefault(body["chat"]["chat_id"], []).append(op)
                done = await api.post(f"/v1/assignments/{body['assignment_id']}/complete", headers=headers)
                assert done.status_code == 200, done.text

        await asyncio.wait_for(asyncio.gather(*(operator(f"op-{i:02d}") for i in range(50))), 240)
    assert sorted(got) == sorted(chats)
    assert all(len(ops) == 1 for ops in got.values())
    assert await count(env, "SELECT count(*) FROM assigner.assignments") == 1000
    await assert_invariants(env, capacity=1)


async def test_concurrent_pulls_by_one_operator_stay_within_capacity(env):
    settings = env.with_settings(operator_capacity=2)
    await produce_chats(settings, 20)
    async with running("assigner", settings) as api:
        await eventually(lambda: count(env, "SELECT count(*) = 20 FROM assigner.chats"), timeout=30)
        answers = await asyncio.gather(*(api.post("/v1/assignments/next", headers=token("op-a")) for _ in range(10)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["assignment_id"] for r in answers}) == 2
    assert await count(env, "SELECT count(*) FROM assigner.assignments WHERE ended_at IS NULL") == 2
    await assert_invariants(env, capacity=2)


async def reset_group_to_start(settings, group):
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in (TOPIC_INBOUND,)),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group(group),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await eventually(lambda: asyncio.sleep(0, result=bool(consumer.assignment())), timeout=20)
        await consumer.seek_to_beginning()
        await consumer.commit({tp: 0 for tp in consumer.assignment()})
    finally:
        await consumer.stop()


async def test_a_redelivered_batch_and_a_retried_message_change_nothing(env):
    chats = await produce_chats(env.settings, 30, prefix="r")
    async with running("assigner", env.settings):
        await eventually(lambda: count(env, "SELECT count(*) = 30 FROM assigner.chats"), timeout=30)
        await eventually(lambda: count(env, "SELECT count(*) = 0 FROM assigner.outbox"), timeout=30)
    before = await count(env, "SELECT count(*) FROM assigner.messages")
    facts_before = len(await harness.read_topic(env.settings, TOPIC_LIFECYCLE, min_records=60, timeout=10))
    await reset_group_to_start(env.settings, "assigner")
    async with running("assigner", env.settings), Producer(env.settings) as kafka:
        # A frontend retry: the same message id under a new event id.
        retry = user_message(chats[0], "hello again", message_id="dup-1")
        await kafka.send(TOPIC_INBOUND, retry)
        await kafka.send(TOPIC_INBOUND, user_message(chats[0], "hello again", message_id="dup-1"))
        await eventually(lambda: count(env, "SELECT count(*) = 1 FROM assigner.messages WHERE message_id = 'dup-1'"))
        await asyncio.sleep(1.0)  # let any (wrong) re-application land before counting
        await eventually(lambda: count(env, "SELECT count(*) = 0 FROM assigner.outbox"), timeout=30)
    assert await count(env, "SELECT count(*) FROM assigner.messages") == before + 1
    assert await count(env, "SELECT message_count FROM assigner.chats WHERE chat_id = $1", chats[0]) == 2
    facts_after = len(await harness.read_topic(env.settings, TOPIC_LIFECYCLE, min_records=facts_before + 1, timeout=10))
    assert facts_after == facts_before + 1  # only the one new message_recorded


async def test_a_pull_is_an_index_probe_however_long_the_history(env):
    conn = await env.connect()
    try:
        await conn.execute("""
            INSERT INTO assigner.chats (chat_id, state, last_operator_id, message_count, created_at, updated_at)
            SELECT 'done-' || g, 'completed', 'op-z', 1, now(), now() FROM generate_series(1, 50000) g""")
        await conn.execute("""
            INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, message_count, created_at, updated_at)
            SELECT 'wait-' || g, 'waiting_assignment', now() - g * interval '1 second', now(), 1, now(), now()
            FROM generate_series(1, 2000) g""")
        await conn.execute("ANALYZE assigner.chats")
        # The batch claim (every pull) and the per-operator fallback (a puller who may not take the oldest).
        plans = [
            "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + QUERIES.claim_waiting_chats, 20)),
            "\n".join(
                r[0]
                for r in await conn.fetch("EXPLAIN " + QUERIES.claim_next_chat, "op-a", harness.utcnow(), ["wait-1"])
            ),
        ]
    finally:
        await conn.close()
    for plan in plans:
        assert "chats_queue_idx" in plan, plan
        assert "Seq Scan" not in plan and "Sort" not in plan, plan
