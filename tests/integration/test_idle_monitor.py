"""The idle monitor against the real Kafka broker and Postgres: lifecycle facts in, `assignment_idle` out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from services.idle_monitor import domain
from shared.events import (
    TOPIC_LIFECYCLE,
    TOPIC_TIMEOUTS,
    AssignmentEnded,
    AssignmentEndedPayload,
    ChatAssigned,
    ChatAssignedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    utcnow,
)
from tests import harness


def chat_assigned(
    chat_id: str,
    assignment_id: uuid.UUID,
    operator_id: str = "op-1",
    at: datetime | None = None,
    idle_timeout_s: int | None = None,
):
    """A `chat_assigned` fact as the assigner's outbox publishes it (`idle_timeout_s`: its queue's override)."""
    at = at or utcnow()
    return ChatAssigned(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatAssignedPayload(
            assignment_id=assignment_id,
            operator_id=operator_id,
            assigned_at=at,
            via="pull",
            idle_timeout_s=idle_timeout_s,
        ),
    )


def assignment_ended(chat_id: str, assignment_id: uuid.UUID, outcome: str = "answered", operator_id: str = "op-1"):
    """An `assignment_ended` fact as the assigner's outbox publishes it."""
    now = utcnow()
    return AssignmentEnded(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=now,
        producer="assigner",
        payload=AssignmentEndedPayload(
            assignment_id=assignment_id,
            operator_id=operator_id,
            outcome=outcome,
            started_at=now - timedelta(seconds=1),
            ended_at=now,
        ),
    )


def user_message_recorded(chat_id: str, message_id: str) -> MessageRecorded:
    """A user's `message_recorded` fact."""
    now = utcnow()
    return MessageRecorded(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=now,
        producer="assigner",
        payload=MessageRecordedPayload(message_id=message_id, sender="user", text="still there?", recorded_at=now),
    )


async def idle_events(settings, *, expect: int, timeout: float) -> list[dict]:
    """The `assignment_idle` events on the test's chat.timeouts, read from the beginning."""
    records = await harness.read_topic(settings, TOPIC_TIMEOUTS, min_records=expect, timeout=timeout)
    return [dict(harness.record_json(r), _key=r.key, _ts=r.timestamp) for r in records]


async def armed_ids(env) -> set[uuid.UUID]:
    """The assignment ids with an armed deadline."""
    conn = await env.connect()
    try:
        return {r["assignment_id"] for r in await conn.fetch("SELECT assignment_id FROM idle_monitor.deadlines")}
    finally:
        await conn.close()


async def tombstoned(env, assignment_id: uuid.UUID) -> bool:
    """True once the monitor has recorded the assignment as ended."""
    return await _has_row(env, "ended_assignments", "assignment_id", assignment_id)


async def applied(env, event_id: uuid.UUID) -> bool:
    """True once the monitor has applied (recorded) the event."""
    return await _has_row(env, "processed_events", "event_id", event_id)


async def _has_row(env, table: str, column: str, value) -> bool:
    conn = await env.connect()
    try:
        return await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM idle_monitor.{table} WHERE {column} = $1)", value)
    finally:
        await conn.close()


async def until_consuming(env, producer: harness.Producer, settings) -> None:
    """Wait until the monitor's consumer group applies facts (it joined and owns the partitions)."""
    probe = uuid.uuid4()
    for chat in ("warm-a", "warm-b", "warm-c", "warm-d", "warm-e", "warm-f"):
        await producer.send(TOPIC_LIFECYCLE, assignment_ended(chat, probe))
    await harness.eventually(lambda: tombstoned(env, probe), timeout=30)


def sample(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_a_silent_assignment_fires_assignment_idle_within_a_second_of_its_deadline(env):
    settings = env.with_settings(idle_timeout_s=1.5)
    async with harness.running("idle_monitor", settings) as client, harness.Producer(settings) as producer:
        await until_consuming(env, producer, settings)
        before = (await client.get("/metrics")).text
        assignment = uuid.uuid4()
        fact = chat_assigned("chat-silent", assignment, operator_id="op-quiet")
        await producer.send(TOPIC_LIFECYCLE, fact)

        events = await idle_events(settings, expect=1, timeout=15)
        await harness.eventually(lambda: _not_armed(env, assignment))
        after = (await client.get("/metrics")).text

    assert len(events) == 1
    event = events[0]
    deadline = fact.payload.assigned_at + timedelta(seconds=1.5)
    assert event["_key"] == b"chat-silent"
    assert event["type"] == "assignment_idle"
    assert event["chat_id"] == "chat-silent"
    assert event["event_id"] == str(domain.idle_event_id(assignment))
    assert event["payload"]["assignment_id"] == str(assignment)
    assert event["payload"]["operator_id"] == "op-quiet"
    assert datetime.fromisoformat(event["payload"]["deadline"]) == deadline
    produced_at = event["_ts"] / 1000
    assert deadline.timestamp() <= produced_at <= deadline.timestamp() + 1.0
    assert (
        sample(after, "switchboard_idle_timers_fired_total") - sample(before, "switchboard_idle_timers_fired_total")
        >= 1
    )
    assert (
        sample(after, "switchboard_idle_timers_armed_total") - sample(before, "switchboard_idle_timers_armed_total")
        >= 1
    )
    assert sample(after, "switchboard_idle_fire_lateness_seconds_count") > sample(
        before, "switchboard_idle_fire_lateness_seconds_count"
    )


async def test_a_queue_idle_timeout_override_sets_the_deadline_and_user_messages_do_not_move_it(env):
    settings = env.with_settings(idle_timeout_s=300)  # the global timeout would not fire during the test
    short, plain = uuid.uuid4(), uuid.uuid4()
    async with harness.running("idle_monitor", settings), harness.Producer(settings) as producer:
        await until_consuming(env, producer, settings)
        fact = chat_assigned("chat-fast-queue", short, idle_timeout_s=2)
        await producer.send(TOPIC_LIFECYCLE, fact)
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-default-queue", plain))
        # The user keeps writing while the operator stays silent: the queue's 2 s still hold.
        for n in range(3):
            await producer.send(
                TOPIC_LIFECYCLE,
                user_message_recorded("chat-fast-queue", f"m-{n}"),
            )
        events = await idle_events(settings, expect=1, timeout=15)
        await harness.eventually(lambda: _not_armed(env, short))
        armed = await _deadlines(env)
        await asyncio.sleep(1.0)
        later = await idle_events(settings, expect=2, timeout=1.0)
    assert [e["payload"]["assignment_id"] for e in events] == [str(short)]
    assert datetime.fromisoformat(events[0]["payload"]["deadline"]) == fact.payload.assigned_at + timedelta(seconds=2)
    assert later == events  # the assignment of the queue without an override keeps the global 300 s
    assert armed == {plain: timedelta(seconds=300)}


async def _deadlines(env) -> dict[uuid.UUID, timedelta]:
    """Each armed assignment's deadline minus its start."""
    conn = await env.connect()
    try:
        rows = await conn.fetch("SELECT assignment_id, deadline - assigned_at AS span FROM idle_monitor.deadlines")
        return {r["assignment_id"]: r["span"] for r in rows}
    finally:
        await conn.close()


async def _not_armed(env, assignment_id: uuid.UUID) -> bool:
    return assignment_id not in await armed_ids(env)


async def test_an_assignment_that_ends_before_its_deadline_never_fires(env):
    settings = env.with_settings(idle_timeout_s=1.0)
    outcomes = ["answered", "released", "reassigned", "completed", "timed_out"]
    ids = [uuid.uuid4() for _ in outcomes]
    async with harness.running("idle_monitor", settings), harness.Producer(settings) as producer:
        for n, (assignment, outcome) in enumerate(zip(ids, outcomes)):
            await producer.send(TOPIC_LIFECYCLE, chat_assigned(f"chat-{n}", assignment))
            await producer.send(TOPIC_LIFECYCLE, assignment_ended(f"chat-{n}", assignment, outcome))
        await harness.eventually(lambda: _all_tombstoned(env, ids))
        # Each end was applied after its start (one chat, one partition) and disarmed it: nothing is
        # armed, nothing can be armed again (tombstones), and a deadline that fired meanwhile would be
        # on Kafka already (a fired deadline is deleted only once Kafka acked its event).
        assert await armed_ids(env) == set()
    assert await harness.read_all(settings, TOPIC_TIMEOUTS) == []


async def _all_tombstoned(env, ids) -> bool:
    return all([await tombstoned(env, a) for a in ids])


async def test_a_start_arriving_after_its_end_arms_no_timer(env):
    settings = env.with_settings(idle_timeout_s=1.0)
    late, alive = uuid.uuid4(), uuid.uuid4()
    async with harness.running("idle_monitor", settings), harness.Producer(settings) as producer:
        await producer.send(TOPIC_LIFECYCLE, assignment_ended("chat-late", late, "reassigned"))
        await harness.eventually(lambda: tombstoned(env, late))
        late_start = chat_assigned("chat-late", late)
        await producer.send(TOPIC_LIFECYCLE, late_start)
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-alive", alive))
        await idle_events(settings, expect=1, timeout=5)  # alive's deadline passed (and late's before it)
        # The late start was applied and armed nothing: no deadline of it can fire, now or later.
        await harness.eventually(lambda: applied(env, late_start.event_id))
        assert late not in await armed_ids(env)
    events = [harness.record_json(r) for r in await harness.read_all(settings, TOPIC_TIMEOUTS)]
    assert [e["payload"]["assignment_id"] for e in events] == [str(alive)]


async def test_a_deadline_survives_an_idle_monitor_restart(env):
    settings = env.with_settings(idle_timeout_s=2.0)
    assignment = uuid.uuid4()
    async with harness.Producer(settings) as producer:
        async with harness.running("idle_monitor", settings):
            fact = chat_assigned("chat-restart", assignment)
            await producer.send(TOPIC_LIFECYCLE, fact)
            await harness.eventually(lambda: _armed(env, assignment))
        # Down across the deadline: nothing may fire meanwhile, and nothing may be lost.
        await asyncio.sleep(2.5)
        assert await idle_events(settings, expect=1, timeout=0.5) == []
        async with harness.running("idle_monitor", settings):
            restarted = utcnow()
            events = await idle_events(settings, expect=1, timeout=10)
            await harness.eventually(lambda: _not_armed(env, assignment))
    assert [e["payload"]["assignment_id"] for e in events] == [str(assignment)]
    assert events[0]["_ts"] / 1000 <= restarted.timestamp() + 1.0


async def _armed(env, assignment_id: uuid.UUID) -> bool:
    return assignment_id in await armed_ids(env)


async def test_two_instances_hand_back_each_assignment_once(env):
    settings = env.with_settings(idle_timeout_s=1.0, idle_check_interval_s=0.05)
    ids = [uuid.uuid4() for _ in range(60)]
    async with harness.running("idle_monitor", settings), harness.running("idle_monitor", settings):
        async with harness.Producer(settings) as producer:
            for n, assignment in enumerate(ids):
                await producer.send(TOPIC_LIFECYCLE, chat_assigned(f"chat-{n}", assignment, operator_id=f"op-{n % 7}"))
        events = await idle_events(settings, expect=len(ids), timeout=30)
        await harness.eventually(lambda: _none_armed(env))
        # Give a double fire every chance to show up.
        await asyncio.sleep(1.0)
        events = await idle_events(settings, expect=len(ids) + 1, timeout=1.5)
    fired = [e["payload"]["assignment_id"] for e in events]
    assert sorted(fired) == sorted(str(a) for a in ids)


async def _none_armed(env) -> bool:
    return not await armed_ids(env)


async def test_redelivered_facts_change_nothing(env):
    settings = env.with_settings(idle_timeout_s=1.0)
    fired, ended = uuid.uuid4(), uuid.uuid4()
    start_fired = chat_assigned("chat-a", fired)
    start_ended, end = chat_assigned("chat-b", ended), assignment_ended("chat-b", ended)
    async with harness.running("idle_monitor", settings), harness.Producer(settings) as producer:
        for fact in (start_fired, start_fired, start_ended, end, start_ended, end):
            await producer.send(TOPIC_LIFECYCLE, fact)
        first = await idle_events(settings, expect=1, timeout=10)
        await harness.eventually(lambda: _none_armed(env))
        # Redelivered after the fire: already applied, so no timer is armed again.
        for fact in (start_fired, start_ended, end):
            await producer.send(TOPIC_LIFECYCLE, fact)
        await asyncio.sleep(2.0)
        again = await idle_events(settings, expect=2, timeout=1.5)
        assert await armed_ids(env) == set()
    assert [e["payload"]["assignment_id"] for e in first] == [str(fired)]
    assert [e["event_id"] for e in again] == [e["event_id"] for e in first]


async def test_an_undecodable_fact_goes_to_the_dead_letter_topic_and_the_partition_moves_on(env):
    settings = env.with_settings(idle_timeout_s=1.0)
    assignment = uuid.uuid4()
    async with harness.running("idle_monitor", settings), harness.Producer(settings) as producer:
        await producer.send_raw(TOPIC_LIFECYCLE, b"{not json", b"chat-x")
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-x", assignment))
        events = await idle_events(settings, expect=1, timeout=10)
        dead = await harness.read_topic(settings, "chat.dlq", min_records=1, timeout=10)
    assert [e["payload"]["assignment_id"] for e in events] == [str(assignment)]
    assert [r.value for r in dead] == [b"{not json"]


async def test_facts_it_does_not_act_on_are_skipped_by_their_type_header_and_poison_still_reaches_the_dlq(env):
    settings = env.with_settings(idle_timeout_s=1.0)
    assignment = uuid.uuid4()
    async with harness.running("idle_monitor", settings) as api, harness.Producer(settings) as producer:
        # Typed as a fact the monitor ignores: skipped unparsed, whatever the body.
        await producer.send_raw(
            TOPIC_LIFECYCLE, b"{skipped unparsed", b"chat-y", headers=[("type", b"message_recorded")]
        )
        # An unknown type in the header, and no header at all: decoded, so both are dead letters.
        await producer.send_raw(TOPIC_LIFECYCLE, b"{bogus type", b"chat-y", headers=[("type", b"no_such_fact")])
        await producer.send_raw(TOPIC_LIFECYCLE, b"{no header", b"chat-y")
        fact = chat_assigned("chat-y", assignment)
        await producer.send_raw(TOPIC_LIFECYCLE, harness.encode(fact), b"chat-y", headers=[("type", b"chat_assigned")])
        events = await idle_events(settings, expect=1, timeout=10)
        dead = await harness.read_topic(settings, "chat.dlq", min_records=2, timeout=10)
        metrics = (await api.get("/metrics")).text
    assert [e["payload"]["assignment_id"] for e in events] == [str(assignment)]
    assert sorted(r.value for r in dead) == [b"{bogus type", b"{no header"]
    assert 'result="ignored"' in metrics and 'topic="chat.lifecycle"' in metrics
