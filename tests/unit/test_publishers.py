"""Each producer's FastStream publisher on the in-memory TestKafkaBroker (no Kafka): what reaches the
topic, typed by its envelope model, with its key and CloudEvents headers; what the producer does after."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition
from faststream.kafka import KafkaMessage, TestKafkaBroker

from services.assigner import handlers
from services.assigner.outbox import OutboxRelay
from services.assigner.repository import QUERIES, Changes
from services.idle_monitor import domain as idle_domain
from services.idle_monitor.handlers import Ticker
from services.ingest import domain as ingest_domain
from services.ingest.publisher import Publisher
from shared.events import (
    TOPIC_DLQ,
    TOPIC_INBOUND,
    TOPIC_LIFECYCLE,
    TOPIC_TIMEOUTS,
    AssignmentIdle,
    ChatQueued,
    InboundEvent,
    LifecycleEvent,
    TimeoutEvent,
    UserMessage,
    encode,
)
from shared.kafka.broker import make_broker
from shared.kafka.deadletter import DeadLetters, Poisoned
from shared.kafka.publishers import declare
from tests.harness import eventually, make_settings
from tests.stats_facts import chat_queued

SETTINGS = make_settings("postgresql://postgres@127.0.0.1/x", "pfx.", kafka_bootstrap_servers="127.0.0.1:1")
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def received(broker, topic: str) -> list[tuple[bytes | None, bytes, dict[str, str]]]:
    """Subscribe to a prefixed topic on `broker`; the list fills with (key, body, headers) as records arrive."""
    got: list = []

    @broker.subscriber(SETTINGS.topic(topic))
    async def keep(message: KafkaMessage) -> None:
        got.append((message.raw_message.key, message.body, dict(message.headers)))

    return got


def assert_cloudevent(headers: dict[str, str], event_id, event_type: str, source: str, at: datetime) -> None:
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(event_id)
    assert headers["ce_type"] == f"switchboard.{event_type}"
    assert headers["ce_source"] == f"/switchboard/{source}"
    assert datetime.fromisoformat(headers["ce_time"]) == at
    assert headers["type"] == event_type


def test_each_topic_is_declared_once_with_its_envelope_schema():
    broker = make_broker(SETTINGS, "x")
    schemas = {TOPIC_INBOUND: InboundEvent, TOPIC_TIMEOUTS: TimeoutEvent, TOPIC_LIFECYCLE: LifecycleEvent}
    for topic, schema in schemas.items():
        publisher = declare(broker, SETTINGS, topic)
        assert declare(broker, SETTINGS, topic) is publisher
        assert publisher.topic == SETTINGS.topic(topic)
        assert publisher.specification.config.schema_ is schema
    assert len(broker.publishers) == 3


async def test_ingest_publishes_the_stored_envelope_keyed_by_chat_with_its_headers():
    broker = make_broker(SETTINGS, "ingest")
    got = received(broker, TOPIC_INBOUND)
    publisher = Publisher(SETTINGS, broker)
    message = ingest_domain.MessageIn(message_id="m-1", sender="user", text="hi")
    draft = ingest_domain.draft("chat-1", message, uuid.uuid4(), T0)
    async with TestKafkaBroker(broker):
        assert await publisher.publish([("chat-1", draft.envelope)]) == [None]
    [(key, body, headers)] = got
    assert key == b"chat-1" and body == draft.envelope
    event = UserMessage.model_validate_json(body)
    assert_cloudevent(headers, draft.event_id, "user_message", "ingest", T0)
    assert event.event_id == draft.event_id


class FakeConn:
    """The relay's and the ticker's view of a connection: a transaction, the outbox's queries."""

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.deleted: list = []

    def transaction(self):
        return contextlib.nullcontext()

    async def fetchval(self, query, *args):
        return True  # the relay's advisory lock

    async def fetch(self, query, *args):
        return self.rows

    async def execute(self, query, ids):
        self.deleted.append(ids)


class FakePool:
    def __init__(self, conn: FakeConn):
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self.conn


async def test_the_outbox_relay_publishes_in_id_order_with_headers_then_deletes_the_rows():
    broker = make_broker(SETTINGS, "assigner")
    got = received(broker, TOPIC_LIFECYCLE)
    facts = [chat_queued(chat, T0 + timedelta(seconds=n)) for n, chat in enumerate(["c1", "c2", "c1"])]
    rows = [
        {
            "id": n + 10,
            "chat_id": f.chat_id,
            "event_id": f.event_id,
            "type": f.type,
            "envelope": encode(f).decode(),
            "occurred_at": json.loads(encode(f))["occurred_at"],
        }
        for n, f in enumerate(facts)
    ]
    conn = FakeConn(rows)
    relay = OutboxRelay(FakePool(conn), declare(broker, SETTINGS, TOPIC_LIFECYCLE), SETTINGS, QUERIES)
    async with TestKafkaBroker(broker):
        assert await relay.publish_once() == 3
    assert [(key, ChatQueued.model_validate_json(body)) for key, body, _ in got] == [
        (f.chat_id.encode(), f) for f in facts
    ]
    for (_, _, headers), fact in zip(got, facts):
        assert_cloudevent(headers, fact.event_id, "chat_queued", "assigner", fact.occurred_at)
    assert conn.deleted == [[10, 11, 12]]


class OnceConn(FakeConn):
    """A connection whose outbox hands out its rows once (then they are published), counting the reads."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    async def fetch(self, query, *args):
        self.reads += 1
        rows, self.rows = self.rows, []
        return rows


async def test_the_relay_publishes_facts_committed_in_its_process_without_waiting_for_its_poll_interval():
    settings = SETTINGS.model_copy(update={"outbox_poll_interval_s": 60.0})
    broker = make_broker(settings, "assigner")
    got = received(broker, TOPIC_LIFECYCLE)
    fact = chat_queued("c1", T0)
    conn = OnceConn()
    relay = OutboxRelay(FakePool(conn), declare(broker, settings, TOPIC_LIFECYCLE), settings, QUERIES)
    async with TestKafkaBroker(broker):
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: asyncio.sleep(0, result=conn.reads == 1), timeout=5)  # idle: pausing 60 s
            row = {"id": 1, "chat_id": "c1", "event_id": fact.event_id, "type": fact.type}
            conn.rows = [row | {"envelope": encode(fact).decode(), "occurred_at": T0.isoformat()}]
            handlers.after_commit(Changes(), [relay])  # a commit with no facts leaves it pausing
            await asyncio.sleep(0.2)
            assert conn.reads == 1 and got == []
            committed = Changes()
            committed.facts.append(("c1", fact, T0))
            handlers.after_commit(committed, [relay])
            await eventually(lambda: asyncio.sleep(0, result=len(got) == 1), timeout=5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert ChatQueued.model_validate_json(got[0][1]) == fact


class FakeTimers:
    """The ticker's store: two due deadlines, the fired ones recorded."""

    def __init__(self, due):
        self.due = due
        self.fired: list = []
        self.pool = FakePool(FakeConn())

    async def claim_due(self, conn, now, limit):
        return self.due[:limit]

    async def delete_fired(self, conn, ids):
        self.fired.extend(ids)


async def test_the_idle_ticker_publishes_assignment_idle_with_headers_and_deletes_what_was_acknowledged():
    broker = make_broker(SETTINGS, "idle_monitor")
    typed: list[AssignmentIdle] = []

    @broker.subscriber(SETTINGS.topic(TOPIC_TIMEOUTS))
    async def idle(event: AssignmentIdle, message: KafkaMessage) -> None:
        typed.append(event)
        headers = dict(message.headers)
        assert_cloudevent(headers, event.event_id, "assignment_idle", "idle_monitor", event.occurred_at)
        assert message.raw_message.key == event.chat_id.encode()

    due = [
        idle_domain.Deadline(uuid.uuid4(), f"chat-{n}", "op-1", T0, T0 + timedelta(seconds=30 + n)) for n in range(2)
    ]
    store = FakeTimers(due)
    ticker = Ticker(store, declare(broker, SETTINGS, TOPIC_TIMEOUTS), SETTINGS)
    async with TestKafkaBroker(broker):
        assert await ticker.fire_due() == 2
    assert [e.event_id for e in typed] == [idle_domain.idle_event_id(d.assignment_id) for d in due]
    assert store.fired == [d.assignment_id for d in due]


class Record:
    def __init__(self, offset: int, value: bytes | None, key: bytes | None = b"chat-9"):
        self.offset, self.timestamp, self.key, self.value = offset, 1_700_000_000_000 + offset, key, value


async def test_a_dead_letter_keeps_key_and_value_names_its_origin_and_is_sent_once_until_committed():
    broker = make_broker(SETTINGS, "assigner")
    got = received(broker, TOPIC_DLQ)
    source = TopicPartition(SETTINGS.topic(TOPIC_INBOUND), 2)
    dead_letters = DeadLetters(
        declare(broker, SETTINGS, TOPIC_DLQ), SETTINGS.topic(TOPIC_DLQ), "pfx.assigner", {source.topic: TOPIC_INBOUND}
    )
    poisoned = Poisoned(source, Record(41, b'{"event_id": '), "invalid JSON: " + "é" * 3000)
    async with TestKafkaBroker(broker):
        await dead_letters.send(poisoned)
        await dead_letters.send(poisoned)  # the batch retried before its offsets were committed
        dead_letters.committed({source: 42})
        await dead_letters.send(Poisoned(source, Record(42, b"x"), "again"))
    assert [(key, body) for key, body, _ in got] == [(b"chat-9", b'{"event_id": '), (b"chat-9", b"x")]
    headers = got[0][2]
    assert headers["dlq.source_topic"] == source.topic and headers["dlq.source_partition"] == "2"
    assert headers["dlq.source_offset"] == "41" and headers["dlq.consumer_group"] == "pfx.assigner"
    assert headers["dlq.reason"].startswith("invalid JSON") and len(headers["dlq.reason"].encode()) <= 4000
    assert headers["ce_id"] == str(poisoned.marker) and headers["ce_type"] == "switchboard.dead_letter"
    assert headers["ce_source"] == "/switchboard/pfx.assigner" and headers["ce_specversion"] == "1.0"
    assert headers["content-type"] == "application/octet-stream"
