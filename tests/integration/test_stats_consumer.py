"""Stats against the real broker and database: counting, redelivery, replay and UTC days."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from aiokafka import AIOKafkaConsumer

from shared.events import TOPIC_LIFECYCLE
from switchboard.reconcile import consumer_lag, lifecycle_partitions
from tests import harness
from tests.stats_facts import Ledger, assignment_ended, chat_assigned, message_recorded

ADMIN = harness.token("boss", "admin")


async def _drained(settings):
    """Wait until the stats group has committed every chat.lifecycle record."""

    async def check():
        return await consumer_lag(settings) == 0

    await harness.eventually(check, timeout=30, interval=0.1)


async def _snapshot(env) -> dict:
    conn = await env.connect()
    try:
        out = {}
        for table in ("operator_daily", "operator_totals", "chat_totals", "operator_chat_days", "operator_chats"):
            out[table] = sorted(tuple(r) for r in await conn.fetch(f"SELECT * FROM stats.{table}"))
        return out
    finally:
        await conn.close()


def seed_example(chat_id: str, operator_id: str, start: datetime) -> list:
    """docs/contract.md §5's example: "hey", assignment, "how are you?" while the operator types, the reply."""
    a = uuid.uuid4()
    assigned_at = start + timedelta(seconds=2)
    replied_at = start + timedelta(seconds=9, microseconds=123_456)
    return [
        message_recorded(chat_id, "user", start, text="hey"),
        chat_assigned(chat_id, operator_id, assigned_at, a),
        message_recorded(chat_id, "user", start + timedelta(seconds=5), text="how are you?"),
        message_recorded(
            chat_id,
            "operator",
            replied_at,
            operator_id=operator_id,
            assignment_id=a,
            first_response_ms=(replied_at - assigned_at) // timedelta(milliseconds=1),
            text="fine!",
        ),
        assignment_ended(chat_id, operator_id, a, "answered", assigned_at, replied_at),
    ]


async def test_the_seed_example_counts_one_assignment_two_user_messages_one_reply_one_chat(env):
    start = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
    async with harness.running("stats", env.settings) as client, harness.Producer(env.settings) as producer:
        for fact in seed_example("chat-seed", "op-1", start):
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)

        chat = (await client.get("/v1/chats/chat-seed/stats", headers=ADMIN)).json()
        assert chat == {"chat_id": "chat-seed", "user_messages": 2, "operator_messages": 1, "assignments": 1}
        for day in (None, "2025-03-14"):
            params = {"day": day} if day else {}
            op = (await client.get("/v1/operators/op-1/stats", params=params, headers=ADMIN)).json()
            assert op == {
                "operator_id": "op-1",
                "assignments": 1,
                "messages_sent": 1,
                "chats_handled": 1,
                "answered": 1,
                "released": 0,
                "timed_out": 0,
                "reassigned_away": 0,
                "first_response_count": 1,
                "first_response_ms_sum": 7123,
            }
        other_day = (await client.get("/v1/operators/op-1/stats", params={"day": "2025-03-15"}, headers=ADMIN)).json()
        assert other_day["assignments"] == other_day["messages_sent"] == 0


async def test_the_same_events_produced_again_change_nothing(env):
    facts = seed_example("chat-dup", "op-1", datetime(2025, 3, 14, 10, 0, tzinfo=UTC))
    async with harness.running("stats", env.settings), harness.Producer(env.settings) as producer:
        for fact in facts:
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)
        before = await _snapshot(env)
        for fact in facts + facts[::-1]:  # the same event ids again, in a batch and out of order
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)
        assert await _snapshot(env) == before


async def test_a_group_rewound_to_the_earliest_offset_replays_everything_and_changes_nothing(env):
    ledger = Ledger()
    start = datetime(2025, 6, 1, 22, 0, tzinfo=UTC)
    for i in range(20):
        at = start + timedelta(minutes=7 * i)
        ledger.user(f"chat-r{i % 5}", at)
        ledger.assign(f"chat-r{i % 5}", f"op-{i % 3}", at + timedelta(seconds=1), via="reassign")
        ledger.operator(f"chat-r{i % 5}", f"op-{i % 3}", at + timedelta(seconds=3))
    async with harness.Producer(env.settings) as producer:
        for fact in ledger.facts:
            await producer.send(TOPIC_LIFECYCLE, fact)
    async with harness.running("stats", env.settings):
        await _drained(env.settings)
    before = await _snapshot(env)

    # Rewind the stopped group to the beginning: every batch is delivered a second time.
    partitions = await lifecycle_partitions(env.settings)
    assert partitions
    rewinder = AIOKafkaConsumer(
        bootstrap_servers=env.settings.kafka_bootstrap_servers,
        group_id=env.settings.group("stats"),
        enable_auto_commit=False,
    )
    await rewinder.start()
    try:
        rewinder.assign(partitions)
        await rewinder.commit({tp: 0 for tp in partitions})
    finally:
        await rewinder.stop()
    assert await consumer_lag(env.settings) == len(ledger.facts)

    async with harness.running("stats", env.settings) as client:
        await _drained(env.settings)
        metrics = (await client.get("/metrics")).text
    assert await _snapshot(env) == before
    assert (
        f'switchboard_consumer_events_total{{group="{env.settings.topic_prefix}stats",result="duplicate",topic="chat.lifecycle"}}'
        in metrics
    )


async def test_messages_either_side_of_midnight_utc_land_on_their_own_days(env):
    midnight = datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) + timedelta(microseconds=1)
    before, after = midnight - timedelta(milliseconds=1), midnight + timedelta(milliseconds=1)
    # The same instants as seen from UTC+02:00: the day is still the UTC one.
    tz = timezone(timedelta(hours=2))
    async with harness.running("stats", env.settings) as client, harness.Producer(env.settings) as producer:
        a = uuid.uuid4()
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-mid", "op-n", before - timedelta(seconds=30), a))
        await producer.send(
            TOPIC_LIFECYCLE,
            message_recorded(
                "chat-mid",
                "operator",
                before.astimezone(tz),
                operator_id="op-n",
                assignment_id=a,
                first_response_ms=30_000,
            ),
        )
        await producer.send(
            TOPIC_LIFECYCLE, assignment_ended("chat-mid", "op-n", a, "answered", before - timedelta(seconds=30), before)
        )
        await producer.send(
            TOPIC_LIFECYCLE, message_recorded("chat-mid", "operator", after.astimezone(tz), operator_id="op-n")
        )
        await producer.send(TOPIC_LIFECYCLE, message_recorded("chat-mid", "operator", after, operator_id="op-n"))
        await _drained(env.settings)

        async def day(d):
            r = await client.get("/v1/operators/op-n/stats", params={"day": d}, headers=ADMIN)
            assert r.status_code == 200
            return r.json()

        old, new = await day("2025-12-31"), await day("2026-01-01")
        assert (
            old["messages_sent"],
            old["chats_handled"],
            old["assignments"],
            old["answered"],
            old["first_response_count"],
            old["first_response_ms_sum"],
        ) == (1, 1, 1, 1, 1, 30_000)
        assert (
            new["messages_sent"],
            new["chats_handled"],
            new["assignments"],
            new["answered"],
            new["first_response_count"],
        ) == (2, 1, 0, 0, 0)
        total = (await client.get("/v1/operators/op-n/stats", headers=ADMIN)).json()
        # One chat on each day, but the same chat: all time it is one chat handled.
        assert (total["messages_sent"], total["chats_handled"]) == (3, 1)


async def test_metrics_export_first_response_histogram_and_aggregate_counters_without_chat_labels(env):
    async with harness.running("stats", env.settings) as client, harness.Producer(env.settings) as producer:
        before = (await client.get("/metrics")).text
        for fact in seed_example("chat-metrics", "op-m", datetime(2025, 3, 14, 10, 0, tzinfo=UTC)):
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)
        text = (await client.get("/metrics")).text
    assert "switchboard_stats_first_response_seconds_bucket" in text
    assert "switchboard_stats_assignments_total" in text
    assert 'switchboard_stats_assignments_ended_total{outcome="answered"}' in text
    assert 'switchboard_stats_messages_total{sender="user"}' in text
    assert _sample(text, "switchboard_stats_first_response_seconds_count") == (
        _sample(before, "switchboard_stats_first_response_seconds_count") + 1
    )
    stats_lines = [ln for ln in text.splitlines() if ln.startswith("switchboard_stats_")]
    assert stats_lines and not any("chat" in ln or "op-m" in ln for ln in stats_lines)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
