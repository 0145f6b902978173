"""The batch consumer when its batches keep failing or its loop crashes, on real Kafka and Postgres.

The failure is injected in the database the way a real one would come: a trigger on the
idle monitor's processed-events table refuses every insert, so each batch's transaction fails
until the test drops it. The consumer must retry in place, dead-letter a poison record of that
batch once (not once per attempt), turn `/readyz` and `switchboard_consumer_healthy` red once it
has been failing for SWITCHBOARD_CONSUMER_STALL_S, and green again when its batches apply.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from shared.events import TOPIC_DLQ, TOPIC_LIFECYCLE, ChatAssigned, ChatAssignedPayload, encode, utcnow
from tests import harness
from tests.harness import eventually, running, token

pytestmark = pytest.mark.timeout(180)
ADMIN = token("admin-1", "admin")
PARTITION = 0

REFUSE_BATCHES = """
CREATE FUNCTION idle_monitor.refuse_batches() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected failure: this database refuses every batch';
END $$;
CREATE TRIGGER refuse_batches BEFORE INSERT ON idle_monitor.processed_events
    FOR EACH STATEMENT EXECUTE FUNCTION idle_monitor.refuse_batches();
"""
ACCEPT_BATCHES = "DROP TRIGGER refuse_batches ON idle_monitor.processed_events"


def chat_assigned(chat_id: str) -> ChatAssigned:
    """A `chat_assigned` fact as the assigner's outbox publishes it."""
    now = utcnow()
    return ChatAssigned(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=now,
        producer="assigner",
        payload=ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id="op-1", assigned_at=now, via="pull"),
    )


async def refuse_batches(env, refuse: bool) -> None:
    conn = await env.connect()
    try:
        await conn.execute(REFUSE_BATCHES if refuse else ACCEPT_BATCHES)
    finally:
        await conn.close()


async def produce(settings, records: list[tuple[bytes | None, bytes | None]]) -> list[int]:
    """Write raw records to one partition of chat.lifecycle in one go; returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic(TOPIC_LIFECYCLE), value=v, key=k, partition=PARTITION)
            for k, v in records
        ]
        return [(await f).offset for f in futures]
    finally:
        await producer.stop()


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample's value from a /metrics text, or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def retries(client, group: str) -> float:
    return sample((await client.get("/metrics")).text, "switchboard_consumer_retries_total", {"group": group}) or 0


async def armed(client) -> int:
    r = await client.get("/v1/admin/timers", headers=ADMIN)
    return r.json()["armed"] if r.status_code == 200 else -1


async def test_a_poison_record_in_a_batch_retried_after_a_transient_failure_reaches_the_dlq_exactly_once(env):
    settings = env.settings
    group = settings.group("idle_monitor")
    good = chat_assigned("chat-after-poison")
    await refuse_batches(env, True)
    # Written before the consumer starts, so its first poll holds both: one batch, poison first.
    [poison_offset, _] = await produce(
        settings, [(b"chat-poison", b'{"event_id": "'), (b"chat-after-poison", encode(good))]
    )
    async with running("idle_monitor", settings) as client:

        async def retried_a_few_times():
            return await retries(client, group) >= 3

        await eventually(retried_a_few_times, timeout=30)
        assert await armed(client) == 0  # the batch is refused, not skipped
        await refuse_batches(env, False)

        async def applied():
            return await armed(client) == 1

        await eventually(applied, timeout=30)
        metrics = (await client.get("/metrics")).text
    dlq = await harness.read_all(settings, TOPIC_DLQ)  # the consumer stopped: its dead letters are acked
    mine = [r for r in dlq if dict(r.headers).get("dlq.consumer_group") == group.encode()]
    assert [dict(r.headers)["dlq.source_offset"] for r in mine] == [str(poison_offset).encode()], (
        f"{len(mine)} dead letters for one poison record"
    )
    assert sample(metrics, "switchboard_dlq_records_total", {"group": group, "topic": TOPIC_LIFECYCLE}) == 1


async def test_readyz_turns_503_naming_the_consumer_while_its_batches_keep_failing_and_200_once_they_apply(env):
    stall_s = 4.0
    settings = env.with_settings(consumer_stall_s=stall_s)
    group = settings.group("idle_monitor")
    check = f"consumer:{group}"
    async with running("idle_monitor", settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        await refuse_batches(env, True)
        await produce(settings, [(b"chat-refused", encode(chat_assigned("chat-refused")))])

        async def failing():
            return await retries(client, group) >= 1

        await eventually(failing, timeout=30, interval=0.05)
        failing_seen = time.monotonic()
        assert (await client.get("/readyz")).status_code == 200  # a failure shorter than the bound is no alarm

        async def red():
            r = await client.get("/readyz")
            return r if r.status_code == 503 else None

        r = await eventually(red, timeout=stall_s + 10, interval=0.1)
        assert time.monotonic() - failing_seen < stall_s + 10
        body = r.json()
        assert body["status"] == "not_ready"
        assert body["checks"][check] is False and body["checks"]["consumers"] is False
        assert body["checks"]["postgres"] is True and body["checks"]["kafka"] is True
        gauge = sample((await client.get("/metrics")).text, "switchboard_consumer_healthy", {"group": group})
        assert gauge == 0.0
        assert await armed(client) == 0

        await refuse_batches(env, False)

        async def green():
            r = await client.get("/readyz")
            return r.status_code == 200 and await armed(client) == 1

        await eventually(green, timeout=30, interval=0.1)
        assert (await client.get("/readyz")).json()["checks"][check] is True
        gauge = sample((await client.get("/metrics")).text, "switchboard_consumer_healthy", {"group": group})
        assert gauge == 1.0


async def test_a_consume_loop_that_crashes_after_a_poll_is_restarted_and_applies_what_it_had_fetched(env):
    settings = env.settings
    group = settings.group("idle_monitor")
    async with running("idle_monitor", settings) as client:
        consumer = client.app.state.consumer
        kafka = consumer.subscriber.consumer  # the aiokafka consumer FastStream polls
        real_getmany = kafka.getmany
        crashes = []

        async def getmany_then_crash(*args, **kwargs):
            batches = await real_getmany(*args, **kwargs)
            if any(batches.values()) and not crashes:
                crashes.append(time.monotonic())
                raise RuntimeError("injected crash between the poll and the apply")
            return batches

        kafka.getmany = getmany_then_crash
        await produce(
            settings, [(b"chat-a", encode(chat_assigned("chat-a"))), (b"chat-b", encode(chat_assigned("chat-b")))]
        )

        async def applied():
            return await armed(client) == 2

        await eventually(applied, timeout=30)
        assert crashes, "the injected crash never happened"
        assert consumer.running
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"][f"consumer:{group}"] is True, ready.text


async def rewind_group(settings, group: str, offset: int) -> None:
    """Commit `offset` for the group on the test partition, as if its later commits had been lost."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(settings.topic(TOPIC_LIFECYCLE), PARTITION)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def test_a_poison_record_re_read_after_its_batch_committed_is_not_dead_lettered_again(env):
    # A restart or a new owner re-reads records whose offsets were not committed yet (offsets are
    # committed in the background, after the batch's transaction): good ones are skipped by event
    # id; the poison must be skipped too, not sent to chat.dlq a second time.
    settings = env.settings
    group = settings.group("idle_monitor")
    good = chat_assigned("chat-good")
    [poison_offset, _] = await produce(settings, [(b"chat-poison", b"not json at all"), (b"chat-good", encode(good))])
    for run in (1, 2):
        async with running("idle_monitor", settings) as client:

            async def settled():
                text = (await client.get("/metrics")).text
                seen = sum(
                    sample(
                        text,
                        "switchboard_consumer_events_total",
                        {"group": group, "topic": TOPIC_LIFECYCLE, "result": r},
                    )
                    or 0
                    for r in ("applied", "duplicate")
                )
                return seen >= run  # the same process-wide counter: the good record seen once per run

            await eventually(settled, timeout=30)
            assert await armed(client) == 1
        await rewind_group(settings, group, 0)
    dlq = await harness.read_all(settings, TOPIC_DLQ)  # the consumer stopped: its dead letters are acked
    mine = [r for r in dlq if dict(r.headers).get("dlq.consumer_group") == group.encode()]
    assert [dict(r.headers)["dlq.source_offset"] for r in mine] == [str(poison_offset).encode()], (
        f"{len(mine)} dead letters for one poison record read twice"
    )


async def test_a_consumer_whose_task_is_gone_turns_readyz_503_at_once_naming_it(env):
    settings = env.settings
    group = settings.group("idle_monitor")
    async with running("idle_monitor", settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        consumer = client.app.state.consumer
        tasks = list(consumer.subscriber.tasks)
        for task in tasks:  # what no supervision restarts: the consume loop cancelled, not crashed
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"][f"consumer:{group}"] is False, r.text
        gauge = sample((await client.get("/metrics")).text, "switchboard_consumer_healthy", {"group": group})
        assert gauge == 0.0
