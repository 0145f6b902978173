"""Pure counting rules of stats: which counter each fact moves, on which UTC day."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.stats import domain
from services.stats.api import parse_day
from shared.errors import ApiError
from tests.stats_facts import assignment_ended, chat_assigned, message_recorded

T0 = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
DAY = date(2025, 3, 14)


def test_the_seed_example_tallies_one_assignment_two_user_messages_one_reply():
    a = uuid.uuid4()
    facts = [
        message_recorded("c", "user", T0, text="hey"),
        chat_assigned("c", "op", T0 + timedelta(seconds=1), a),
        message_recorded("c", "user", T0 + timedelta(seconds=2), text="how are you?"),
        message_recorded(
            "c", "operator", T0 + timedelta(seconds=4), operator_id="op", assignment_id=a, first_response_ms=3000
        ),
        assignment_ended("c", "op", a, "answered", T0 + timedelta(seconds=1), T0 + timedelta(seconds=4)),
    ]
    t = domain.tally(facts)
    assert dict(t.chats["c"]) == {"user_messages": 2, "operator_messages": 1, "assignments": 1}
    assert dict(t.operator_days[("op", DAY)]) == {
        "assignments": 1,
        "messages_sent": 1,
        "answered": 1,
        "first_response_count": 1,
        "first_response_ms_sum": 3000,
    }
    assert t.touched == {("op", "c", DAY)}
    assert t.first_responses_ms == [3000]


def test_each_outcome_moves_its_own_counter_and_completed_moves_none():
    a = uuid.uuid4()
    outcomes = ("answered", "released", "timed_out", "reassigned", "completed")
    t = domain.tally(assignment_ended("c", "op", a, o, T0, T0) for o in outcomes)
    assert dict(t.operator_days[("op", DAY)]) == {"answered": 1, "released": 1, "timed_out": 1, "reassigned_away": 1}
    assert t.assignments_ended["completed"] == 1


def test_days_come_from_the_fact_timestamps_in_utc_whatever_their_offset():
    plus_two = timezone(timedelta(hours=2))
    just_after = datetime(2026, 1, 1, 1, 0, 0, 1, tzinfo=plus_two)  # 2025-12-31 23:00 UTC
    assert domain.utc_day(just_after) == date(2025, 12, 31)
    t = domain.tally(
        [
            message_recorded(
                "c", "operator", datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), operator_id="op"
            ),
            message_recorded("c", "operator", datetime(2026, 1, 1, tzinfo=UTC), operator_id="op"),
        ]
    )
    assert t.operator_days[("op", date(2025, 12, 31))]["messages_sent"] == 1
    assert t.operator_days[("op", date(2026, 1, 1))]["messages_sent"] == 1


def test_settle_adds_first_time_chats_and_rolls_days_up_to_all_time():
    t = domain.tally(
        [
            message_recorded("c1", "operator", T0, operator_id="op"),
            message_recorded("c1", "operator", T0 + timedelta(days=1), operator_id="op"),
        ]
    )
    s = domain.settle(t, {("op", DAY): 1, ("op", DAY + timedelta(days=1)): 1}, {"op": 1})
    assert s.operator_days[("op", DAY)]["chats_handled"] == 1
    assert s.operator_days[("op", DAY + timedelta(days=1))]["chats_handled"] == 1
    assert s.operator_totals["op"]["chats_handled"] == 1
    assert s.operator_totals["op"]["messages_sent"] == 2


def test_settle_leaves_out_rows_that_would_add_nothing():
    t = domain.tally(
        [assignment_ended("c", "op", uuid.uuid4(), "completed", T0, T0), message_recorded("c", "user", T0)]
    )
    s = domain.settle(t, {}, {})
    assert s.operator_days == {} and s.operator_totals == {}
    assert s.chats == {"c": {"user_messages": 1, "operator_messages": 0, "assignments": 0}}


def test_compare_treats_a_missing_row_as_zeros_and_reports_each_figure():
    expected = {("op",): {"messages_sent": 2, "answered": 0}}
    actual = {("op",): {"messages_sent": 3}, ("ghost",): {"answered": 0}}
    diffs = domain.compare("operator_total", ("messages_sent", "answered"), expected, actual)
    assert diffs == [domain.Difference("operator_total", ("op",), "messages_sent", 2, 3)]
    assert diffs[0].describe("assigner", "stats") == "operator_total op messages_sent: assigner=2 stats=3 (diff +1)"


@pytest.mark.parametrize("value", ["2025-02-30", "2025-1-05", "tomorrow", "20250105", "2025-01-05T00:00"])
def test_a_day_must_be_a_real_calendar_date_written_yyyy_mm_dd(value):
    with pytest.raises(ApiError) as err:
        parse_day(value)
    assert err.value.status == 422


def test_no_day_means_all_time():
    assert parse_day(None) is None
    assert parse_day("2024-02-29") == date(2024, 2, 29)
