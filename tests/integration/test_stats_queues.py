"""Per-queue stats against the real broker and database: counting, redelivery, the API, the gauges, reconcile."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from shared.events import TOPIC_LIFECYCLE, utcnow
from switchboard.reconcile import SHADOW_SCHEMA, consumer_lag, rebuild, reconcile
from tests import harness
from tests.stats_facts import (
    Ledger,
    assignment_ended,
    chat_answered,
    chat_assigned,
    chat_completed,
    chat_queued,
    publish,
    random_run,
)

ADMIN = harness.token("boss", "admin")


async def _drained(settings) -> None:
    async def check():
        return await consumer_lag(settings) == 0

    await harness.eventually(check, timeout=30, interval=0.1)


def two_queues(start: datetime) -> list:
    """sales: 3 chats queued, 3 first assignments (10 s, 50 s, 200 s; 2 within its 60 s SLA), one reassign,
    2 answered, 1 completed. billing: 1 chat queued, never assigned."""
    facts = []
    waits = {"s1": 10, "s2": 50, "s3": 200}
    for n, (chat, wait_s) in enumerate(waits.items()):
        queued_at = start + timedelta(seconds=n)
        facts.append(chat_queued(chat, queued_at, queue_id="sales"))
        a = uuid.uuid4()
        assigned_at = queued_at + timedelta(seconds=wait_s)
        facts.append(
            chat_assigned(
                chat,
                f"op-{n}",
                assigned_at,
                a,
                queue_id="sales",
                first_wait_ms=wait_s * 1000,
                sla_met=wait_s <= 60,
            )
        )
        if chat != "s3":
            facts.append(chat_answered(chat, f"op-{n}", assigned_at + timedelta(seconds=5), queue_id="sales"))
            facts.append(
                assignment_ended(
                    chat, f"op-{n}", a, "answered", assigned_at, assigned_at + timedelta(seconds=5), queue_id="sales"
                )
            )
        else:
            facts.append(
                chat_assigned(
                    chat, "op-9", assigned_at + timedelta(seconds=30), uuid.uuid4(), "reassign", queue_id="sales"
                )
            )
    facts.append(chat_completed("s1", start + timedelta(minutes=10), queue_id="sales"))
    facts.append(chat_queued("b1", start, queue_id="billing"))
    return facts


SALES = {
    "queued": 3,
    "assigned": 4,
    "answered": 2,
    "completed": 1,
    "first_wait_count": 3,
    "first_wait_ms_sum": 260_000,
    "sla_met": 2,
}


async def test_queue_figures_are_counted_once_per_event_and_served_per_day(env):
    start = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
    facts = two_queues(start)
    async with harness.running("stats", env.settings) as client, harness.Producer(env.settings) as producer:
        for fact in facts + facts[::-1]:  # every event id twice, the second time out of order
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)

        r = await client.get("/v1/queues/sales/stats", params={"day": "2025-03-14"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        sales = r.json()
        assert {k: sales[k] for k in SALES} == SALES
        assert sales["sla_attainment"] == 2 / 3
        assert sales["first_wait_histogram"] == {
            "bounds_s": [5, 15, 30, 60, 120, 300, 600],
            "counts": [0, 1, 0, 1, 0, 1, 0, 0],
        }

        listing = (await client.get("/v1/stats/queues", params={"day": "2025-03-14"}, headers=ADMIN)).json()
        assert [q["queue_id"] for q in listing["queues"]] == ["billing", "sales"]
        assert listing["queues"][0]["queued"] == 1 and listing["queues"][0]["sla_attainment"] is None
        assert listing["queues"][1] == sales and listing["next_cursor"] is None

        page = (await client.get("/v1/stats/queues", params={"day": "2025-03-14", "limit": 1}, headers=ADMIN)).json()
        assert [q["queue_id"] for q in page["queues"]] == ["billing"]
        rest = await client.get(
            "/v1/stats/queues", params={"day": "2025-03-14", "limit": 1, "cursor": page["next_cursor"]}, headers=ADMIN
        )
        assert [q["queue_id"] for q in rest.json()["queues"]] == ["sales"] and rest.json()["next_cursor"] is None

        other_day = (await client.get("/v1/stats/queues", params={"day": "2025-03-15"}, headers=ADMIN)).json()
        assert other_day == {"day": "2025-03-15", "queues": [], "next_cursor": None}
        unknown = (
            await client.get("/v1/queues/no-such-queue/stats", params={"day": "2025-03-14"}, headers=ADMIN)
        ).json()
        assert unknown["assigned"] == 0 and unknown["sla_attainment"] is None
        assert unknown["first_wait_histogram"]["counts"] == [0] * 8
        bad = await client.get("/v1/queues/Sales/stats", headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
        # The per-operator figures count the same facts as before.
        op = (await client.get("/v1/operators/op-0/stats", params={"day": "2025-03-14"}, headers=ADMIN)).json()
        assert (op["assignments"], op["answered"]) == (1, 1)


async def test_todays_attainment_and_first_assignments_are_gauges_per_queue(env):
    now = utcnow()
    facts = [
        chat_assigned("g1", "op", now, uuid.uuid4(), queue_id="vip", first_wait_ms=5_000, sla_met=True),
        chat_assigned("g2", "op", now, uuid.uuid4(), queue_id="vip", first_wait_ms=90_000, sla_met=False),
        chat_assigned("g3", "op", now, uuid.uuid4(), queue_id="vip", first_wait_ms=80_000, sla_met=False),
        chat_assigned("g4", "op", now, uuid.uuid4(), queue_id="vip", first_wait_ms=1_000, sla_met=True),
        chat_queued("g5", now, queue_id="quiet"),  # figures today, but no first assignment
        # Yesterday's figures are not today's.
        chat_assigned("g6", "op", now - timedelta(days=1), uuid.uuid4(), queue_id="old", first_wait_ms=1, sla_met=True),
    ]
    async with harness.running("stats", env.settings) as client, harness.Producer(env.settings) as producer:
        for fact in facts:
            await producer.send(TOPIC_LIFECYCLE, fact)
        await _drained(env.settings)
        gauges = client.app.state.queue_gauges
        await gauges.refresh()
        text = (await client.get("/metrics")).text
        # A new UTC day: the series of yesterday's queues go.
        gauges.clock = lambda: now + timedelta(days=1)
        await gauges.refresh()
        tomorrow = (await client.get("/metrics")).text
    # Only this service's two gauges: the registry is the test process's, where other files' services
    # (the assigner's per-queue gauges) may have left series of the same queue names.
    text, tomorrow = _todays_gauges(text), _todays_gauges(tomorrow)
    assert 'switchboard_queue_sla_attainment_ratio{queue="vip"} 0.5' in text
    assert 'switchboard_queue_first_assignments_today{queue="vip"} 4.0' in text
    assert 'switchboard_queue_first_assignments_today{queue="quiet"} 0.0' in text
    assert 'switchboard_queue_sla_attainment_ratio{queue="quiet"}' not in text  # undefined, not 0
    assert 'queue="old"' not in text
    assert 'queue="vip"' not in tomorrow and 'queue="quiet"' not in tomorrow


def _todays_gauges(exposition: str) -> str:
    """The sample lines of stats' per-queue gauges of the day, out of a whole /metrics text."""
    names = ("switchboard_queue_sla_attainment_ratio{", "switchboard_queue_first_assignments_today{")
    return "\n".join(line for line in exposition.splitlines() if line.startswith(names))


async def test_reconcile_recounts_assigned_per_queue_and_rebuild_replays_every_queue_figure(env):
    ledger = Ledger()
    random_run(
        ledger,
        events=800,
        operators=4,
        chats=30,
        seed=16,
        start=datetime(2025, 5, 31, 22, 0, tzinfo=UTC),
        queues=("default", "sales", "billing"),
    )
    await publish(env, ledger)
    async with harness.running("stats", env.settings):
        report = await asyncio.wait_for(reconcile(env.settings, quiesce_timeout_s=60), 90)
        assert report.not_quiescent is None
        assert report.differences == []
        assert report.compared["queue_day"] >= 3 * 2  # three queues over several UTC days
        replay = await asyncio.wait_for(rebuild(env.settings, quiesce_timeout_s=30), 120)
        assert replay.differences == [] and replay.replayed == len(ledger.facts)

        conn = await env.connect()
        try:
            queue, day, assigned = await conn.fetchrow(
                "SELECT queue_id, day, assigned FROM stats.queue_daily WHERE queue_id = 'sales' AND assigned > 0"
                " ORDER BY day LIMIT 1"
            )
            await conn.execute(
                "UPDATE stats.queue_daily SET assigned = assigned + 1, first_wait_ms_sum = first_wait_ms_sum - 7"
                " WHERE queue_id = $1 AND day = $2",
                queue,
                day,
            )
        finally:
            await conn.close()
        report = await reconcile(env.settings)
        assert [(d.table, d.key, d.figure, d.actual - d.expected) for d in report.differences] == [
            ("queue_day", (queue, day), "assigned", 1)
        ]
        replay = await rebuild(env.settings)
        assert {(d.table, d.key, d.figure, d.actual - d.expected) for d in replay.differences} == {
            ("queue_day", (queue, day), "assigned", 1),
            ("queue_day", (queue, day), "first_wait_ms_sum", -7),
        }
    conn = await env.connect()
    try:  # the replay kept its shadow schema (a difference), per-queue table included
        assert await conn.fetchval(f"SELECT count(*) FROM {SHADOW_SCHEMA}.queue_daily") > 0
        sums = await conn.fetchrow("SELECT sum(first_wait_count) AS n, sum(sla_met) AS met FROM stats.queue_daily")
        assert sums["n"] > 0 and sums["met"] <= sums["n"]
    finally:
        await conn.close()
