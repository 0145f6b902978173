"""Transient failures: Postgres sessions killed, Postgres down, Kafka down.

None of them may send anything to the dead-letter topic or skip an event: consumers retry in
place with bounded backoff, `/readyz` answers 503 while a dependency is gone, and the same
running service (no restart) catches up once it is back; ingest answers 503 meanwhile. The
Postgres outage runs on a cluster of the test's own and the Kafka outages on a broker of this
module's own; the shared ones are never touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlparse

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import TOPIC_DLQ, TOPIC_INBOUND, TOPIC_LIFECYCLE
from shared.kafka import ensure_topics
from switchboard.reconcile import reconcile
from tests import harness
from tests.e2e.procs import OwnKafka, OwnPostgres, terminate_backends
from tests.harness import Producer, eventually, running, token, user_message

pytestmark = pytest.mark.timeout(240)
ADMIN = token("admin-1", "admin")


async def end_offsets_total(settings, topic: str) -> int:
    """Records ever written to a logical topic (sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [
            TopicPartition(settings.topic(topic), p) for p in consumer.partitions_for_topic(settings.topic(topic)) or ()
        ]
        assert parts, f"{topic} has no partitions"
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def stored(url: str) -> tuple[int, int]:
    """(messages stored, distinct (chat, message) pairs) in the assigner."""
    conn = await asyncpg.connect(url)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM assigner.messages"),
            await conn.fetchval("SELECT count(DISTINCT (chat_id, message_id)) FROM assigner.messages"),
        )
    finally:
        await conn.close()


async def until_stored(url: str, n: int, timeout: float = 60) -> None:
    async def done():
        return (await stored(url))[0] >= n

    await eventually(done, timeout=timeout, interval=0.2)
    total, distinct = await stored(url)
    assert total == distinct == n, (total, distinct, n)


def messages(prefix: str, n: int, chats: int) -> list:
    """`n` user messages over `chats` chats, each message id unique."""
    return [user_message(f"{prefix}-{i % chats}", text=f"message {i}", message_id=f"{prefix}-m{i}") for i in range(n)]


async def send_all(producer: Producer, events: list) -> None:
    await asyncio.gather(*(producer.send(TOPIC_INBOUND, ev) for ev in events))


async def test_terminating_every_postgres_session_again_and_again_loses_and_duplicates_nothing(env):
    settings = env.with_settings(db_pool_max=4)
    database = urlparse(env.database_url).path.lstrip("/")
    admin_url = harness.with_db(env.database_url, "postgres")
    events = messages("term", 3000, 300)
    stop = asyncio.Event()
    killed = []

    async def terminator():
        while not stop.is_set():
            killed.append(await terminate_backends(admin_url, database))
            await asyncio.sleep(0.3)

    async with running("assigner", settings), running("stats", settings):
        async with Producer(settings) as producer:
            task = asyncio.create_task(terminator())
            try:
                for i in range(0, len(events), 300):
                    await send_all(producer, events[i : i + 300])
                    # Redeliveries: the same events again, in order, on their partitions.
                    await send_all(producer, events[i : i + 20])
                    await asyncio.sleep(0.5)
                await asyncio.sleep(2)
            finally:
                stop.set()
                await task
        assert sum(killed) >= 10, killed
        await until_stored(env.database_url, len(events))
        report = await asyncio.wait_for(reconcile(settings, quiesce_timeout_s=60), 90)
        assert report.not_quiescent is None and report.differences == []
    assert await end_offsets_total(settings, TOPIC_DLQ) == 0


@pytest.fixture
async def own_postgres(infra):
    """A PostgreSQL cluster of this test's own, with the migrated databases on it."""
    pg = OwnPostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()


async def test_postgres_down_makes_readyz_red_sends_nothing_to_the_dlq_and_the_same_process_catches_up(
    infra, own_postgres
):
    pg = own_postgres
    database = await harness.create_template(pg.url())
    settings = harness.make_settings(
        harness.with_db(pg.url(), database), f"tpg{uuid.uuid4().hex[:6]}.", kafka_bootstrap_servers=infra["bootstrap"]
    )
    await ensure_topics(settings)
    before, during = messages("pgd", 200, 40), messages("pgu", 600, 60)
    try:
        async with running("assigner", settings) as api, running("stats", settings) as stats:
            async with Producer(settings) as producer:
                await send_all(producer, before)
                await until_stored(settings.database_url, len(before))
                assert (await api.get("/readyz")).status_code == 200

                await asyncio.to_thread(pg.stop, "immediate")
                down_since = time.monotonic()

                async def red():
                    a, s = await api.get("/readyz"), await stats.get("/readyz")
                    return a.status_code == 503 and s.status_code == 503 and not a.json()["checks"]["postgres"]

                await eventually(red, timeout=15, interval=0.2)
                await send_all(producer, during)
                while time.monotonic() - down_since < 6:
                    assert (await api.get("/readyz")).status_code == 503
                    await asyncio.sleep(0.5)
                await asyncio.to_thread(pg.start)

            await until_stored(settings.database_url, len(before) + len(during))

            async def green():
                return (await api.get("/readyz")).status_code == 200 and (await stats.get("/readyz")).status_code == 200

            await eventually(green, timeout=30, interval=0.3)
            report = await asyncio.wait_for(reconcile(settings, quiesce_timeout_s=60), 90)
            assert report.not_quiescent is None and report.differences == []
        assert await end_offsets_total(settings, TOPIC_DLQ) == 0
    finally:
        await harness.delete_topics(infra["bootstrap"], settings.topic_prefix)


@pytest.fixture(scope="module")
async def module_kafka(infra):
    """A Kafka broker of this module's own (never the shared one), formatted and started once."""
    kafka = OwnKafka()
    try:
        await kafka.start()
        yield kafka
    finally:
        await kafka.destroy()


@pytest.fixture
async def own_kafka(module_kafka):
    """The module's broker, running (started again if a test before left it stopped or killed).

    Shared on purpose: each test has its own topics on it, and a broker's start costs seconds.
    """
    await module_kafka.start()
    return module_kafka


async def test_kafka_down_makes_readyz_red_holds_facts_in_the_outbox_and_everything_flows_after(env, own_kafka):
    kafka = own_kafka
    settings = env.with_settings(kafka_bootstrap_servers=kafka.bootstrap, kafka_send_timeout_s=2)
    await ensure_topics(settings)
    operator = token("op-1")
    before, after = messages("kd", 200, 20), messages("ku", 300, 30)
    async with (
        running("assigner", settings) as api,
        running("stats", settings) as stats,
        running("ingest", settings) as ingest,
    ):
        async with Producer(settings) as producer:
            await send_all(producer, before)
        await until_stored(env.database_url, len(before))
        pulled = await api.post("/v1/assignments/next", headers=operator)
        assert pulled.status_code == 200, pulled.text

        kafka.kill()  # a crash, not a clean shutdown
        try:
            await outage_and_recovery(env, settings, kafka, api, stats, ingest, pulled.json(), len(before), after)
        finally:
            await kafka.start()  # no-op when it is back; the services must not shut down without it
        report = await asyncio.wait_for(reconcile(settings, quiesce_timeout_s=60), 90)
        assert report.not_quiescent is None and report.differences == []
        facts = [
            harness.record_json(r)
            for r in await harness.read_all(settings, TOPIC_LIFECYCLE)  # quiescent: the outbox is published
        ]
        conn = await env.connect()
        try:
            stored_ids = {
                (r["chat_id"], r["message_id"])
                for r in await conn.fetch("SELECT chat_id, message_id FROM assigner.messages")
            }
            ended = {
                r[0]
                for r in await conn.fetch(
                    "SELECT assignment_id::text FROM assigner.assignments WHERE ended_at IS NOT NULL"
                )
            }
        finally:
            await conn.close()
        assert {
            (f["chat_id"], f["payload"]["message_id"]) for f in facts if f["type"] == "message_recorded"
        } == stored_ids
        assert {f["payload"]["assignment_id"] for f in facts if f["type"] == "assignment_ended"} == ended
        assert len(stored_ids) == len(before) + len(after) + 1
    assert await end_offsets_total(settings, TOPIC_DLQ) == 0


async def outage_and_recovery(
    env, settings, kafka: OwnKafka, api, stats, ingest, pulled: dict, stored_before: int, after: list
) -> None:
    """While the broker is dead: readiness red, operators keep working into the outbox, ingest
    refuses; once it is back: the same processes publish, consume and answer again."""
    operator, frontend = token("op-1"), token("web", "frontend")

    async def red():
        return [(await c.get("/readyz")).status_code for c in (api, stats, ingest)] == [503, 503, 503]

    await eventually(red, timeout=20, interval=0.3)
    # Postgres still answers: operators keep working, their facts wait in the outbox.
    released = await api.post(f"/v1/assignments/{pulled['assignment_id']}/release", headers=operator)
    assert released.status_code == 200, released.text
    again = await api.post("/v1/assignments/next", headers=token("op-2"))
    assert again.status_code == 200, again.text
    conn = await env.connect()
    try:
        assert await conn.fetchval("SELECT count(*) FROM assigner.outbox") >= 3
    finally:
        await conn.close()
    # Ingest refuses instead of half-accepting; the same message id is accepted once Kafka is back.
    body = {"message_id": "during-outage", "sender": "user", "text": "anyone?"}
    refused = await ingest.post("/v1/chats/kd-0/messages", headers=frontend, json=body)
    assert refused.status_code == 503, refused.text
    assert (await api.get("/readyz")).status_code == 503

    await kafka.start()

    async def accepted():
        r = await ingest.post("/v1/chats/kd-0/messages", headers=frontend, json=body)
        return r.status_code == 202

    await eventually(accepted, timeout=60, interval=1)
    async with Producer(settings) as producer:
        await send_all(producer, after)
    await until_stored(env.database_url, stored_before + len(after) + 1)

    async def drained_and_green():
        conn = await env.connect()
        try:
            backlog = await conn.fetchval("SELECT count(*) FROM assigner.outbox")
        finally:
            await conn.close()
        codes = [(await c.get("/readyz")).status_code for c in (api, stats, ingest)]
        return backlog == 0 and codes == [200, 200, 200]

    await eventually(drained_and_green, timeout=60, interval=0.5)


@pytest.mark.slow
async def test_ingest_answers_503_while_kafka_is_down_and_recovers_without_restart(env, own_kafka):
    """A real broker stopped under a running ingest: 503 with Retry-After, then 202 again once it is back, no restart."""
    settings = env.with_settings(kafka_bootstrap_servers=own_kafka.bootstrap, kafka_send_timeout_s=2)
    chat, frontend = f"chat-{uuid.uuid4().hex[:8]}", token("web", "frontend")

    def body(message_id: str) -> dict:
        return {"message_id": message_id, "sender": "user", "text": f"text of {message_id}"}

    try:
        async with running("ingest", settings) as api:
            before = await api.post(f"/v1/chats/{chat}/messages", json=body("m-1"), headers=frontend)
            assert before.status_code == 202, before.text

            await own_kafka.stop()
            down = await api.post(f"/v1/chats/{chat}/messages", json=body("m-2"), headers=frontend)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "kafka_unavailable"
            assert int(down.headers["retry-after"]) >= 1
            batch = await api.post(
                "/v1/messages:batch", json={"messages": [{"chat_id": chat, **body("m-3")}]}, headers=frontend
            )
            assert batch.status_code == 503 and batch.json()["error"]["details"]["results"][0]["status"] == 503
            assert (await api.get("/readyz")).status_code == 503
            conn = await env.connect()
            try:
                row = await conn.fetchrow("SELECT event_id, acked_at FROM ingest.message_keys WHERE message_id = 'm-2'")
            finally:
                await conn.close()
            assert row["acked_at"] is None  # claimed but not accepted: nothing half-accepted

            await own_kafka.start()

            async def accepted_again():
                r = await api.post(f"/v1/chats/{chat}/messages", json=body("m-2"), headers=frontend)
                return r if r.status_code == 202 else None

            again = await eventually(accepted_again, timeout=60, interval=0.5)
            assert again.json()["event_id"] == str(row["event_id"])
            after = await api.post(f"/v1/chats/{chat}/messages", json=body("m-4"), headers=frontend)
            assert after.status_code == 202 and after.json()["duplicate"] is False
            assert (await api.get("/readyz")).status_code == 200

        records = await harness.read_all(settings, TOPIC_INBOUND)  # ingest stopped: all it sent is acked
        ids = [harness.record_json(r)["payload"]["message_id"] for r in sorted(records, key=lambda r: r.offset)]
        # m-2 (and the batch's m-3) may also have been delivered from the outage-time buffer once the broker
        # came back: at least once, always under their single event ids, and in order for the chat.
        assert ids[0] == "m-1" and ids[-1] == "m-4" and "m-2" in ids
        m2 = {
            harness.record_json(r)["event_id"]
            for r in records
            if harness.record_json(r)["payload"]["message_id"] == "m-2"
        }
        assert m2 == {str(row["event_id"])}
    finally:
        await harness.delete_topics(own_kafka.bootstrap, settings.topic_prefix)
