"""Delivery's pure rules: what each stream shows and how its events are numbered."""

import uuid
from datetime import timedelta

from services.delivery import domain
from services.delivery.domain import Holder
from shared.events import (
    AssignmentEnded,
    AssignmentEndedPayload,
    ChatAssigned,
    ChatAssignedPayload,
    ChatCompleted,
    ChatCompletedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    utcnow,
)


def message(chat, text, sender="user", operator_id=None, at=None):
    at = at or utcnow()
    return MessageRecorded(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=at,
        producer="t",
        payload=MessageRecordedPayload(
            message_id=uuid.uuid4().hex, sender=sender, operator_id=operator_id, text=text, recorded_at=at
        ),
    )


def assigned(chat, operator_id, assignment_id):
    now = utcnow()
    return ChatAssigned(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=now,
        producer="t",
        payload=ChatAssignedPayload(assignment_id=assignment_id, operator_id=operator_id, assigned_at=now, via="pull"),
    )


def ended(chat, operator_id, assignment_id, outcome):
    now = utcnow()
    return AssignmentEnded(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=now,
        producer="t",
        payload=AssignmentEndedPayload(
            assignment_id=assignment_id, operator_id=operator_id, outcome=outcome, started_at=now, ended_at=now
        ),
    )


def shown(plan, stream):
    return [
        (e.type, e.data.get("text") or e.data.get("outcome") or e.data.get("display_name"))
        for e in plan.events
        if e.stream == stream
    ]


def test_the_chat_stream_shows_messages_joins_and_completion_with_the_operators_display_name():
    a = uuid.uuid4()
    done = ChatCompleted(
        event_id=uuid.uuid4(),
        chat_id="c",
        occurred_at=utcnow(),
        producer="t",
        payload=ChatCompletedPayload(completed_by="boss", completed_at=utcnow()),
    )
    plan = domain.plan(
        [
            message("c", "hi"),
            assigned("c", "op-1", a),
            message("c", "yo", "operator", "op-1"),
            ended("c", "op-1", a, "answered"),
            done,
        ],
        {},
    )
    assert shown(plan, "chat:c") == [
        ("message", "hi"),
        ("operator_joined", "op-1"),
        ("message", "yo"),
        ("chat_completed", None),
    ]
    assert [e.data["display_name"] for e in plan.events if e.stream == "chat:c" and e.type == "message"] == [
        None,
        "op-1",
    ]


def test_the_operator_stream_gets_messages_only_while_it_holds_the_chat_and_every_end_of_its_assignments():
    a, b = uuid.uuid4(), uuid.uuid4()
    plan = domain.plan(
        [
            message("c", "before anyone"),
            assigned("c", "op-1", a),
            message("c", "while op-1 holds it"),
            ended("c", "op-1", a, "reassigned"),
            assigned("c", "op-2", b),
            message("c", "while op-2 holds it"),
            ended("c", "op-2", b, "timed_out"),
            message("c", "nobody again"),
        ],
        {},
    )
    assert shown(plan, "operator:op-1") == [
        ("assignment_started", None),
        ("message", "while op-1 holds it"),
        ("assignment_ended", "reassigned"),
    ]
    assert shown(plan, "operator:op-2") == [
        ("assignment_started", None),
        ("message", "while op-2 holds it"),
        ("assignment_ended", "timed_out"),
    ]
    assert plan.holders == {"c": None}


def test_a_holder_from_an_earlier_batch_gets_the_chats_messages_and_a_stale_end_changes_no_holder():
    a = uuid.uuid4()
    plan = domain.plan([message("c", "again"), ended("c", "op-1", uuid.uuid4(), "timed_out")], {"c": Holder("op-1", a)})
    assert shown(plan, "operator:op-1") == [("message", "again"), ("assignment_ended", "timed_out")]
    assert plan.holders == {}
    assert domain.chats_of([message("b", "x"), message("a", "y")]) == ["a", "b"]


def test_facts_older_than_the_replay_window_are_not_shown_again():
    now = utcnow()
    old = message("c", "old", at=now - timedelta(seconds=3601))
    kept = domain.recent([old, message("c", "new")], now, 3600)
    assert shown(domain.plan(kept, {}), "chat:c") == [("message", "new")]


def test_each_stream_gets_its_reserved_block_in_partition_order():
    events = domain.plan(
        [message("b", "b1"), message("a", "a1"), message("b", "b2"), message("a", "a2"), message("b", "b3")], {}
    ).events
    assert domain.counts_per_stream(events) == {"chat:a": 2, "chat:b": 3}
    numbered = domain.number(events, {"chat:a": 12, "chat:b": 3})
    assert [(seq, e.data["text"]) for seq, e in numbered] == [(1, "b1"), (11, "a1"), (2, "b2"), (12, "a2"), (3, "b3")]


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap():
    assert domain.retry_delay(1, 5, 3600, 0.0) == 2.5 and domain.retry_delay(1, 5, 3600, 0.999) < 5
    assert domain.retry_delay(4, 5, 3600, 0.0) == 20
    assert domain.retry_delay(30, 5, 3600, 0.0) == 1800 and domain.retry_delay(10_000, 5, 3600, 0.9999) < 3600
    assert [domain.webhook_outcome(s) for s in (200, 204, 301, 500, None)] == [
        "delivered",
        "delivered",
        "rejected",
        "rejected",
        "error",
    ]
