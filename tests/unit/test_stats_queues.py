"""Per-queue stats without Kafka or Postgres: what each fact counts, the histogram, the API over a fake store."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from services.stats import domain
from services.stats.api import queue_stats
from shared.events import utcnow
from tests import fakes, harness
from tests.stats_facts import assignment_ended, chat_answered, chat_assigned, chat_completed, chat_queued

T0 = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
DAY = date(2025, 3, 14)
ADMIN = harness.token("boss", "admin")


def counters(**values: int) -> dict:
    """A queue_daily row's counters: zeros but for `values`."""
    return {name: values.get(name, 0) for name in domain.QUEUE_COUNTERS}


def test_each_queue_fact_counts_in_its_own_queue_on_the_utc_day_of_its_own_timestamp():
    a, b = uuid.uuid4(), uuid.uuid4()
    late = datetime(2025, 3, 14, 23, 59, 59, 999_999, tzinfo=UTC)
    facts = [
        chat_queued("c1", T0, queue_id="sales"),
        chat_queued("c2", late, queue_id="billing"),
        chat_assigned("c1", "op", T0 + timedelta(seconds=20), a, queue_id="sales", first_wait_ms=20_000, sla_met=True),
        chat_assigned(
            "c2", "op", late + timedelta(seconds=90), b, queue_id="billing", first_wait_ms=90_000, sla_met=False
        ),
        chat_answered("c1", "op", T0 + timedelta(seconds=30), queue_id="sales"),
        assignment_ended("c1", "op", a, "answered", T0, T0 + timedelta(seconds=30), queue_id="sales"),
        chat_completed("c1", T0 + timedelta(minutes=5), queue_id="sales"),
    ]
    t = domain.tally(facts)
    assert dict(t.queue_days[("sales", DAY)]) == {
        "queued": 1,
        "assigned": 1,
        "first_wait_count": 1,
        "first_wait_ms_sum": 20_000,
        "first_wait_le_30s": 1,
        "sla_met": 1,
        "answered": 1,
        "completed": 1,
    }
    assert dict(t.queue_days[("billing", DAY)]) == {"queued": 1}
    # Assigned 90 s after 23:59:59.999999: the next UTC day.
    assert dict(t.queue_days[("billing", date(2025, 3, 15))]) == {
        "assigned": 1,
        "first_wait_count": 1,
        "first_wait_ms_sum": 90_000,
        "first_wait_le_120s": 1,
    }
    # The per-operator figures still count the same facts.
    assert t.operator_days[("op", DAY)]["assignments"] == 1


def test_facts_without_a_queue_count_in_default_and_a_later_assignment_is_no_first_wait():
    a, b = uuid.uuid4(), uuid.uuid4()
    t = domain.tally(
        [
            chat_queued("c", T0),
            chat_assigned("c", "op", T0, a, first_wait_ms=0, sla_met=True),
            chat_assigned("c", "op2", T0, b, via="reassign"),  # no first_wait_ms: not a first assignment
        ]
    )
    assert dict(t.queue_days[("default", DAY)]) == {
        "queued": 1,
        "assigned": 2,
        "first_wait_count": 1,
        "first_wait_ms_sum": 0,
        "first_wait_le_5s": 1,
        "sla_met": 1,
    }


def test_sla_met_without_a_first_wait_is_not_counted_so_attainment_never_exceeds_one():
    t = domain.tally([chat_assigned("c", "op", T0, uuid.uuid4(), sla_met=True)])
    assert dict(t.queue_days[("default", DAY)]) == {"assigned": 1}


@pytest.mark.parametrize(
    ("wait_ms", "bucket"),
    [
        (0, "first_wait_le_5s"),
        (5_000, "first_wait_le_5s"),
        (5_001, "first_wait_le_15s"),
        (60_000, "first_wait_le_60s"),
        (60_001, "first_wait_le_120s"),
        (600_000, "first_wait_le_600s"),
        (600_001, "first_wait_over_600s"),
        (86_400_000, "first_wait_over_600s"),
    ],
)
def test_a_first_wait_lands_in_the_bucket_whose_inclusive_bound_first_holds_it(wait_ms, bucket):
    assert domain.first_wait_bucket(wait_ms) == bucket


def test_settle_keeps_queue_rows_with_every_counter_and_drops_empty_ones():
    t = domain.tally([chat_queued("c", T0, queue_id="vip")])
    s = domain.settle(t, {}, {})
    assert s.queue_days == {("vip", DAY): counters(queued=1)}
    assert list(s.queue_days[("vip", DAY)]) == list(domain.QUEUE_COUNTERS)  # the order of the upsert's columns


def test_attainment_is_met_over_first_assignments_and_undefined_without_any():
    assert domain.sla_attainment(4, 3) == 0.75
    assert domain.sla_attainment(0, 0) is None


def test_the_api_gathers_the_histogram_and_computes_attainment():
    row = {"queue_id": "vip", "day": DAY, **counters(first_wait_count=4, sla_met=3, first_wait_le_5s=1)}
    row["first_wait_over_600s"] = 3
    shown = queue_stats(row)
    assert shown["sla_attainment"] == 0.75
    assert shown["first_wait_histogram"] == {
        "bounds_s": [5, 15, 30, 60, 120, 300, 600],
        "counts": [1, 0, 0, 0, 0, 0, 0, 3],
    }
    assert not any(k.startswith("first_wait_le_") or k.startswith("first_wait_over_") for k in shown)


async def test_queue_stats_need_an_admin_token_checked_before_the_path_and_the_day():
    app = fakes.build("stats")  # an Untouched store: every refusal happens before it is reached
    async with fakes.serving(app, "stats") as client:
        for path in ("/v1/stats/queues", "/v1/queues/sales/stats", "/v1/queues/NOT A SLUG/stats"):
            assert (await client.get(path, params={"day": "nope"})).status_code == 401
            assert (await client.get(path, headers=harness.token("op-1"))).status_code == 403
            assert (await client.get(path, headers=harness.token("web", "frontend"))).status_code == 403
    assert app.state.store.reached == []


async def test_a_queue_id_that_is_not_a_slug_and_a_bad_day_or_cursor_are_json_422s():
    app = fakes.build("stats")
    async with fakes.serving(app, "stats") as client:
        for bad in ("Sales", "-x", "a" * 64, "sp ace", "%C3%A9t%C3%A9"):
            r = await client.get(f"/v1/queues/{bad}/stats", headers=ADMIN)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "validation_error" and "queue_id" in r.json()["error"]["message"]
        for path in ("/v1/stats/queues", "/v1/queues/sales/stats"):
            for day in ("2025-02-30", "today", ""):
                r = await client.get(path, params={"day": day}, headers=ADMIN)
                assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (path, day)
        r = await client.get("/v1/stats/queues", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=ADMIN)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
        for limit in ("0", "1001", "x"):
            r = await client.get("/v1/stats/queues", params={"limit": limit}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert app.state.store.reached == []


async def test_an_unknown_queue_reads_as_zeros_and_no_day_means_today_utc():
    store = fakes.StatsStore()
    async with fakes.serving(fakes.build("stats", store=store), "stats") as client:
        r = await client.get("/v1/queues/never-seen/stats", headers=ADMIN)
        today = utcnow().date()
    assert r.status_code == 200
    body = r.json()
    assert body["queue_id"] == "never-seen" and body["day"] == today.isoformat()
    assert body["sla_attainment"] is None and body["first_wait_histogram"]["counts"] == [0] * 8
    assert all(body[name] == 0 for name in ("queued", "assigned", "answered", "completed", "first_wait_count"))
    assert store.days == [today]


async def test_the_queue_list_walks_its_pages_in_queue_order_for_the_day_asked():
    other = date(2025, 3, 15)
    queues = {(f"q{i:02d}", DAY): counters(queued=i) for i in range(5)}
    queues[("elsewhere", other)] = counters(queued=9)
    store = fakes.StatsStore(queues=queues)
    seen, cursor = [], None
    async with fakes.serving(fakes.build("stats", store=store), "stats") as client:
        for _ in range(5):
            params = {"day": "2025-03-14", "limit": 2, **({"cursor": cursor} if cursor else {})}
            r = await client.get("/v1/stats/queues", params=params, headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["day"] == "2025-03-14"
            seen += [(q["queue_id"], q["queued"]) for q in r.json()["queues"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
    assert seen == [(f"q{i:02d}", i) for i in range(5)]
