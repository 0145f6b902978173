"""The publisher's own logic with fake aiokafka producers under the real FastStream broker and publisher:
bounded waits, order, headers, replacing a producer that cannot recover."""

import asyncio
import uuid
from datetime import UTC, datetime

from services.ingest import domain
from services.ingest.publisher import Publisher
from shared.kafka.broker import broker_producer, make_broker
from tests.harness import make_settings

# Nothing listens on port 1: the broker's own connect fails at once; producers come from the fakes.
SETTINGS = make_settings(
    "postgresql://postgres@127.0.0.1/x", "pfx.", kafka_send_timeout_s=0.2, kafka_bootstrap_servers="127.0.0.1:1"
)


class FakeSender:
    def __init__(self):
        self.sender_task = asyncio.get_running_loop().create_future()


class FakeProducer:
    """Acks at once, never, or fails; records what was sent (aiokafka's `send` as FastStream calls it)."""

    def __init__(self, mode: str = "ack"):
        self.mode = mode
        self.sent = []
        self.headers = []
        self.started = self.stopped = False
        self._sender = None

    async def start(self):
        self._sender = FakeSender()
        self.started = True

    async def stop(self):
        self.stopped = True

    async def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
        self.sent.append((topic, key, value))
        self.headers.append(dict(headers or []))
        fut = asyncio.get_running_loop().create_future()
        if self.mode == "ack":
            fut.set_result(None)
        elif self.mode == "fail":
            fut.set_exception(RuntimeError("boom"))
        return fut


def factory(*producers):
    made = list(producers)

    def make(_settings):
        return made.pop(0)

    return make


def publisher(*producers) -> Publisher:
    return Publisher(SETTINGS, make_broker(SETTINGS, "ingest", producer_factory=factory(*producers)))


def envelope(chat_id: str, message_id: str) -> bytes:
    """A real chat.inbound record value, as ingest stores and publishes it."""
    message = domain.MessageIn(message_id=message_id, sender="user", text="hi")
    return domain.draft(chat_id, message, uuid.uuid4(), datetime.now(UTC)).envelope


async def test_records_are_sent_in_order_keyed_by_chat_to_the_prefixed_topic():
    producer = FakeProducer()
    pub = publisher(producer)
    a, b, c = envelope("c1", "m1"), envelope("c2", "m1"), envelope("c1", "m2")
    assert await pub.publish([("c1", a), ("c2", b), ("c1", c)]) == [None, None, None]
    assert producer.sent == [
        ("pfx.chat.inbound", b"c1", a),
        ("pfx.chat.inbound", b"c2", b),
        ("pfx.chat.inbound", b"c1", c),
    ]
    await pub.stop()
    assert producer.stopped


async def test_each_record_carries_its_type_and_cloudevents_headers():
    import json

    producer = FakeProducer()
    pub = publisher(producer)
    value = envelope("c1", "m1")
    await pub.publish([("c1", value)])
    event = json.loads(value)
    headers = {k: v.decode() for k, v in producer.headers[0].items()}
    assert headers["type"] == "user_message"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == event["event_id"]
    assert headers["ce_type"] == "switchboard.user_message"
    assert headers["ce_source"] == "/switchboard/ingest"
    assert datetime.fromisoformat(headers["ce_time"]) == datetime.fromisoformat(event["occurred_at"])
    assert headers["content-type"] == "application/json"
    await pub.stop()


async def test_an_unacknowledged_record_fails_within_the_send_timeout():
    pub = publisher(FakeProducer("hang"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    [error] = await pub.publish([("c1", envelope("c1", "m1"))])
    assert isinstance(error, TimeoutError) and loop.time() - started < 0.5
    await pub.stop()


async def test_a_producer_whose_sender_died_is_replaced_on_the_next_publish():
    dead, fresh = FakeProducer("fail"), FakeProducer()
    pub = publisher(dead, fresh)
    value = envelope("c1", "m1")
    [error] = await pub.publish([("c1", value)])
    assert isinstance(error, RuntimeError)
    dead._sender.sender_task.set_result(None)  # aiokafka's sender task ended: nothing would ever be sent
    assert await pub.publish([("c1", value)]) == [None]
    assert pub.replacements == 1 and fresh.sent == [("pfx.chat.inbound", b"c1", value)]
    await pub.stop()
    assert dead.stopped and fresh.stopped


async def test_failures_outlasting_a_few_timeouts_replace_the_producer():
    stuck, fresh = FakeProducer("hang"), FakeProducer()
    pub = publisher(stuck, fresh)
    value = envelope("c1", "m1")
    for _ in range(4):  # 4 x 0.2 s of failures > 3 send timeouts
        await pub.publish([("c1", value)])
    assert await pub.publish([("c1", value)]) == [None]
    assert pub.replacements == 1
    await pub.stop()
    assert stuck.stopped and fresh.stopped


async def test_a_producer_that_cannot_start_is_started_by_a_later_publish():
    class Unreachable(FakeProducer):
        async def start(self):
            raise ConnectionError("refused")

    fresh = FakeProducer()
    pub = publisher(Unreachable(), fresh)
    await pub.start()  # the broker cannot connect (nothing on port 1): no exception, no producer
    value = envelope("c1", "m1")
    [error] = await pub.publish([("c1", value)])
    assert isinstance(error, ConnectionError)
    assert await pub.publish([("c1", value)]) == [None]
    await pub.stop()
    assert fresh.stopped


async def test_nothing_is_published_after_the_producer_was_stopped():
    producer = FakeProducer()
    pub = publisher(producer)
    await pub.publish([("c1", envelope("c1", "m1"))])
    await pub.stop()
    [error] = await pub.publish([("c1", envelope("c1", "m2"))])
    assert error is not None and len(producer.sent) == 1


def test_the_caching_partitioner_maps_keys_exactly_like_the_default_one():
    from aiokafka.partitioner import DefaultPartitioner

    from shared.kafka import CachingPartitioner

    cached, default = CachingPartitioner(size=5), DefaultPartitioner()
    for n in (6, 12):  # a new partition count remaps, as the default partitioner would
        parts = list(range(n))
        for i in range(40):
            key = f"chat-{i % 9}".encode()
            assert cached(key, parts, parts) == default(key, parts, parts)


async def test_the_services_producer_is_the_same_one_a_failed_ack_starts_its_replacement_clock():
    from shared.kafka.publishers import declare

    failing, fresh = FakeProducer("fail"), FakeProducer()
    broker = make_broker(SETTINGS, "assigner", producer_factory=factory(failing, fresh))
    lifecycle = declare(broker, SETTINGS, "chat.lifecycle")
    producer = broker_producer(broker)
    await producer.start()
    try:
        await lifecycle.publish(b"a", key=b"c1")  # waits for the ack
    except RuntimeError:
        pass
    assert producer.replacements == 0
    await asyncio.sleep(0.65)  # failing for longer than 3 send timeouts of 0.2 s
    await lifecycle.publish(b"b", key=b"c1")
    assert producer.replacements == 1 and fresh.sent == [("pfx.chat.lifecycle", b"c1", b"b")]
    await producer.disconnect()
    assert failing.stopped and fresh.stopped
