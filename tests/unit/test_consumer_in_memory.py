"""The batch consumer's handler on FastStream's in-memory TestKafkaBroker: no Kafka, no Postgres.

What the handler decides per poll (typed events to the applier, poison aside to the dead letters,
types the group does not act on skipped unread, a failed apply neither applied nor counted) is
checked here in milliseconds; offsets, rewinds and rebalances need the real broker
(tests/integration/test_consumer_health.py, test_poison_records.py, test_transient_failures.py).
"""

from __future__ import annotations

import contextlib

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.specification import AsyncAPI

from shared.events import TOPIC_DLQ, TOPIC_INBOUND, TOPIC_LIFECYCLE, TYPE_HEADER, OperatorMessage, UserMessage
from shared.kafka.broker import make_broker
from shared.kafka.consumer import BatchConsumer
from tests.fakes import unit_settings
from tests.harness import operator_message, user_message


class Tracker:
    """Event ids in a set: each id applied once, claimed in the transaction (a rollback forgets them)."""

    def __init__(self):
        self.seen: set = set()
        self.pending: set = set()

    async def claim_new(self, conn, items, markers=()):
        known = self.seen | self.pending
        new = [i for i in items if i.event.event_id not in known]
        self.pending.update(i.event.event_id for i in new)
        fresh = set(markers) - known
        self.pending.update(fresh)
        return new, fresh


class FakePool:
    """One connection whose transaction commits or rolls back the tracker's claims."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    @contextlib.asynccontextmanager
    async def _transaction(self):
        try:
            yield
        except BaseException:
            self.tracker.pending.clear()
            raise
        self.tracker.seen |= self.tracker.pending
        self.tracker.pending.clear()

    def transaction(self):
        return self._transaction()

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self


def build(topics=(TOPIC_INBOUND,), fail: list | None = None, **options):
    settings = unit_settings()
    broker = make_broker(settings, "unit")
    applied: list = []

    async def apply(conn, batch):
        if fail:
            raise fail.pop()
        applied.extend(batch)

    tracker = Tracker()
    consumer = BatchConsumer(
        settings=settings,
        pool=FakePool(tracker),  # type: ignore[arg-type]
        broker=broker,
        group_id="unit",
        topics=list(topics),
        tracker=tracker,  # type: ignore[arg-type]
        apply=apply,
        **options,
    )
    dead_letters: list = []  # what reaches chat.dlq, through the group's FastStream publisher

    @broker.subscriber(settings.topic(TOPIC_DLQ))
    async def dlq(body: bytes, message: KafkaMessage) -> None:
        dead_letters.append((body, message.headers))

    return settings, broker, consumer, applied, dead_letters


async def test_typed_envelopes_reach_the_applier_once_each():
    settings, broker, _consumer, applied, _ = build()
    first, second = user_message("chat-1", "hello"), operator_message("chat-1", "op-1", "hi")
    async with TestKafkaBroker(broker) as test:
        for event in (first, second, first):  # the third is a redelivery of the first
            await test.publish(event.model_dump_json().encode(), settings.topic(TOPIC_INBOUND), key=b"chat-1")
    assert [type(i.event) for i in applied] == [UserMessage, OperatorMessage]
    assert [i.event.event_id for i in applied] == [first.event_id, second.event_id]
    assert {i.topic for i in applied} == {TOPIC_INBOUND}


async def test_poison_goes_to_the_dead_letters_with_its_reason_and_never_to_the_applier():
    settings, broker, _consumer, applied, dead_letters = build()
    good = user_message("chat-2")
    async with TestKafkaBroker(broker) as test:
        # In memory every record is at offset 0: two partitions keep the two poison records apart (the
        # dead letters remember a sent offset until its commit, which runs in the background).
        await test.publish(b"not json", settings.topic(TOPIC_INBOUND), key=b"chat-2", partition=0)
        await test.publish(
            good.model_dump_json().encode(), settings.topic(TOPIC_INBOUND), key=b"another-chat", partition=1
        )
    assert applied == []
    reasons = [headers["dlq.reason"] for _, headers in dead_letters]
    assert len(reasons) == 2
    assert "JSON" in reasons[0] or "json" in reasons[0]
    assert "does not match chat_id" in reasons[1]


async def test_types_the_group_does_not_act_on_are_skipped_unread():
    settings, broker, _consumer, applied, dead_letters = build(
        topics=(TOPIC_LIFECYCLE,), wanted_types=frozenset({"chat_assigned"})
    )
    async with TestKafkaBroker(broker) as test:
        # unparseable on purpose: a skipped record is not even decoded, so it is no poison either
        await test.publish(b"{}", settings.topic(TOPIC_LIFECYCLE), key=b"c", headers={TYPE_HEADER: "chat_queued"})
    assert applied == [] and dead_letters == []


async def test_a_failed_apply_applies_nothing_and_the_next_delivery_applies_it():
    fail = [RuntimeError("database went away")]
    settings, broker, consumer, applied, _ = build(fail=fail)
    event = user_message("chat-3")
    async with TestKafkaBroker(broker) as test:
        await test.publish(event.model_dump_json().encode(), settings.topic(TOPIC_INBOUND), key=b"chat-3")
        assert applied == [] and consumer.failing_for > 0
        await test.publish(event.model_dump_json().encode(), settings.topic(TOPIC_INBOUND), key=b"chat-3")
    assert [i.event.event_id for i in applied] == [event.event_id]


@pytest.mark.parametrize(
    ("topics", "models"),
    [((TOPIC_INBOUND,), {"UserMessage", "OperatorMessage"}), ((TOPIC_LIFECYCLE,), {"ChatAssigned", "ChatQueued"})],
)
def test_the_generated_asyncapi_shows_the_envelopes_the_group_consumes(topics, models):
    _, broker, _, _, _ = build(topics=topics)
    doc = AsyncAPI(broker, schema_version="3.0.0").to_specification().to_jsonable()
    assert models <= set(doc["components"]["schemas"]), sorted(doc["components"]["schemas"])
