"""Every producer's records carry CloudEvents binary-mode headers that match their envelope, on real Kafka.

The record value stays the JSON envelope (the contract); the headers say the same thing to
standard tooling: `ce_specversion` 1.0, `ce_id` the event id, `ce_type` `switchboard.<type>`,
`ce_source` `/switchboard/<producer>`, `ce_time` the RFC 3339 `occurred_at`, `content-type` JSON.
A dead letter (not an envelope) has its marker as id, the consumer group as source.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from services.idle_monitor import domain as idle_domain
from services.idle_monitor.handlers import Ticker
from services.idle_monitor.store import Store
from shared import db
from shared.events import TOPIC_DLQ, TOPIC_INBOUND, TOPIC_LIFECYCLE, TOPIC_TIMEOUTS, cloudevent_headers, utcnow
from shared.kafka.broker import make_broker
from shared.kafka.deadletter import MARKER_NAMESPACE
from shared.kafka.publishers import declare, enqueue
from tests import harness
from tests.harness import eventually, read_topic, record_json, running, token
from tests.integration.test_idle_ticker import arm, due_deadline

FRONTEND = token("web", "frontend")
ADMIN = token("admin-1", "admin")
# RFC 3339 date-time: full date, 'T', full time with optional fraction, and a zone (Z or ±hh:mm).
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def headers_of(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def assert_cloudevent_of_envelope(record) -> None:
    """The record's CloudEvents headers say what its JSON envelope says."""
    event, headers = record_json(record), headers_of(record)
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == event["event_id"]
    assert headers["ce_type"] == f"switchboard.{event['type']}"
    assert headers["ce_source"] == f"/switchboard/{event['producer']}"
    assert RFC3339.match(headers["ce_time"]), headers["ce_time"]
    assert datetime.fromisoformat(headers["ce_time"]) == datetime.fromisoformat(event["occurred_at"])
    assert headers["content-type"] == "application/json"
    assert headers["type"] == event["type"]


async def test_ingest_and_the_outbox_relay_publish_records_with_cloudevents_headers(env):
    settings = env.settings
    async with running("ingest", settings) as ingest, running("assigner", settings) as assigner:
        accepted = await ingest.post(
            "/v1/chats/chat-ce/messages", json={"message_id": "m-1", "sender": "user", "text": "hi"}, headers=FRONTEND
        )
        assert accepted.status_code == 202

        async def recorded():
            return (await assigner.get("/v1/chats/chat-ce", headers=ADMIN)).status_code == 200

        await eventually(recorded, timeout=30)
        [inbound] = await read_topic(settings, TOPIC_INBOUND, min_records=1, timeout=10)
        lifecycle = await read_topic(settings, TOPIC_LIFECYCLE, min_records=2, timeout=10)
    assert record_json(inbound)["event_id"] == accepted.json()["event_id"]
    assert_cloudevent_of_envelope(inbound)
    assert {record_json(r)["type"] for r in lifecycle} >= {"message_recorded", "chat_queued"}
    for record in lifecycle:
        assert_cloudevent_of_envelope(record)
        assert headers_of(record)["ce_source"] == "/switchboard/assigner"


async def test_the_idle_ticker_publishes_records_with_cloudevents_headers(env):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=2)
    store = Store(pool)
    broker = make_broker(env.settings, "idle_monitor")
    timeouts = declare(broker, env.settings, TOPIC_TIMEOUTS)
    await broker.connect()
    try:
        deadline = due_deadline("chat-ce-idle")
        await arm(store, deadline)
        assert await Ticker(store, timeouts, env.settings).fire_due() == 1
        [record] = await harness.read_topic(env.settings, TOPIC_TIMEOUTS, min_records=1, timeout=10)
    finally:
        await broker.stop()
        await pool.close()
    assert record_json(record)["event_id"] == str(idle_domain.idle_event_id(deadline.assignment_id))
    assert_cloudevent_of_envelope(record)
    assert headers_of(record)["ce_source"] == "/switchboard/idle_monitor"


async def test_a_dead_letter_carries_cloudevents_headers_naming_its_marker_and_consumer_group(env):
    settings = env.settings
    async with running("assigner", settings), harness.Producer(settings) as producer:
        started = utcnow()
        await producer.send_raw(TOPIC_INBOUND, b'{"event_id": "', b"chat-ce-poison")
        [poison] = await read_topic(settings, TOPIC_INBOUND, min_records=1, timeout=10)
        [record] = await read_topic(settings, TOPIC_DLQ, min_records=1, timeout=30)
    headers = headers_of(record)
    assert record.value == poison.value
    marker = uuid.uuid5(MARKER_NAMESPACE, f"{poison.topic}/{poison.partition}@{poison.offset}/{poison.timestamp}")
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(marker)
    assert headers["ce_type"] == "switchboard.dead_letter"
    assert headers["ce_source"] == f"/switchboard/{settings.group('assigner')}"
    assert RFC3339.match(headers["ce_time"]) and datetime.fromisoformat(headers["ce_time"]) >= started
    assert headers["content-type"] == "application/octet-stream"
    assert headers["dlq.source_offset"] == str(poison.offset)


async def test_enqueue_writes_the_record_fast_streams_publish_would_write(env):
    """`enqueue` hands records to the broker's producer directly (no FastStream command per record):
    the record on the topic is the one `publisher.publish` writes, value, key and headers in order."""
    settings = env.settings
    broker = make_broker(settings, "assigner")
    publisher = declare(broker, settings, TOPIC_LIFECYCLE)
    await broker.connect()
    try:
        headers = cloudevent_headers(uuid.uuid4(), "chat_queued", "assigner", utcnow())
        value = b'{"same": "record"}'
        direct = await enqueue(publisher, value, key=b"chat-fast", headers=headers)
        await direct
        await publisher.publish(value, key=b"chat-fast", headers=headers, correlation_id=headers["ce_id"])
        first, second = await read_topic(settings, TOPIC_LIFECYCLE, min_records=2, timeout=10)
    finally:
        await broker.stop()
    assert (first.partition, first.offset + 1) == (second.partition, second.offset)
    assert (first.key, first.value) == (second.key, second.value) == (b"chat-fast", value)
    assert list(first.headers) == list(second.headers)
    assert headers_of(first)["correlation_id"] == headers["ce_id"]
