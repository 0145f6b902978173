"""The publisher's own logic with a fake producer: bounded waits, order, replacing a producer that cannot recover."""

import asyncio

from services.ingest.publisher import Publisher
from tests.harness import make_settings

SETTINGS = make_settings("postgresql://postgres@127.0.0.1/x", "pfx.", kafka_send_timeout_s=0.2)


class FakeSender:
    def __init__(self):
        self.sender_task = asyncio.get_running_loop().create_future()


class FakeProducer:
    """Acks at once, never, or fails; records what was sent."""

    def __init__(self, mode: str = "ack"):
        self.mode = mode
        self.sent = []
        self.started = self.stopped = False
        self._sender = None

    async def start(self):
        self._sender = FakeSender()
        self.started = True

    async def stop(self):
        self.stopped = True

    async def send(self, topic, value=None, key=None, headers=None):
        self.sent.append((topic, key, value))
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


async def test_records_are_sent_in_order_keyed_by_chat_to_the_prefixed_topic():
    producer = FakeProducer()
    pub = Publisher(SETTINGS, factory(producer))
    await pub.start()
    assert await pub.publish([("c1", b"a"), ("c2", b"b"), ("c1", b"c")]) == [None, None, None]
    assert producer.sent == [
        ("pfx.chat.inbound", b"c1", b"a"),
        ("pfx.chat.inbound", b"c2", b"b"),
        ("pfx.chat.inbound", b"c1", b"c"),
    ]
    await pub.stop()
    assert producer.stopped


async def test_an_unacknowledged_record_fails_within_the_send_timeout():
    pub = Publisher(SETTINGS, factory(FakeProducer("hang")))
    await pub.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    [error] = await pub.publish([("c1", b"a")])
    assert isinstance(error, TimeoutError) and loop.time() - started < 0.5
    await pub.stop()


async def test_a_producer_whose_sender_died_is_replaced_on_the_next_publish():
    dead, fresh = FakeProducer("fail"), FakeProducer()
    pub = Publisher(SETTINGS, factory(dead, fresh))
    await pub.start()
    [error] = await pub.publish([("c1", b"a")])
    assert isinstance(error, RuntimeError)
    dead._sender.sender_task.set_result(None)  # aiokafka's sender task ended: nothing would ever be sent
    assert await pub.publish([("c1", b"a")]) == [None]
    assert pub.replacements == 1 and fresh.sent == [("pfx.chat.inbound", b"c1", b"a")]
    await pub.stop()
    assert dead.stopped and fresh.stopped


async def test_failures_outlasting_a_few_timeouts_replace_the_producer():
    stuck, fresh = FakeProducer("hang"), FakeProducer()
    pub = Publisher(SETTINGS, factory(stuck, fresh))
    await pub.start()
    for _ in range(4):  # 4 x 0.2 s of failures > 3 send timeouts
        await pub.publish([("c1", b"a")])
    assert await pub.publish([("c1", b"a")]) == [None]
    assert pub.replacements == 1
    await pub.stop()
    assert stuck.stopped and fresh.stopped


async def test_a_producer_that_cannot_start_is_started_by_a_later_publish():
    class Unreachable(FakeProducer):
        async def start(self):
            raise ConnectionError("refused")

    fresh = FakeProducer()
    pub = Publisher(SETTINGS, factory(Unreachable(), Unreachable(), fresh))
    await pub.start()  # Kafka down at start: no exception, no producer
    [error] = await pub.publish([("c1", b"a")])
    assert isinstance(error, ConnectionError)
    assert await pub.publish([("c1", b"a")]) == [None]
    await pub.stop()


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
    from shared.kafka import ResilientProducer

    failing, fresh = FakeProducer("fail"), FakeProducer()
    producer = ResilientProducer(SETTINGS, factory(failing, fresh))
    await producer.start()
    try:
        await producer.send_and_wait("t", value=b"a", key=b"c1")
    except RuntimeError:
        pass
    assert producer.replacements == 0
    await asyncio.sleep(0.65)  # failing for longer than 3 send timeouts of 0.2 s
    await producer.send_and_wait("t", value=b"b", key=b"c1")
    assert producer.replacements == 1 and fresh.sent == [("t", b"c1", b"b")]
    await producer.stop()
    assert failing.stopped and fresh.stopped
