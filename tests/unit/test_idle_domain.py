"""Pure timer decisions of the idle monitor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.idle_monitor import domain
from shared.events import (
    TIMEOUTS,
    AssignmentEnded,
    AssignmentEndedPayload,
    ChatAssigned,
    ChatAssignedPayload,
    ChatQueued,
    ChatQueuedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    encode,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def assigned(
    assignment_id: uuid.UUID,
    chat_id: str = "c1",
    operator_id: str = "op1",
    at: datetime = T0,
    idle_timeout_s: int | None = None,
):
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


def ended(assignment_id: uuid.UUID, chat_id: str = "c1", outcome: str = "answered", at: datetime = T0):
    return AssignmentEnded(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=AssignmentEndedPayload(
            assignment_id=assignment_id,
            operator_id="op1",
            outcome=outcome,
            started_at=T0,
            ended_at=at + timedelta(seconds=5),
        ),
    )


def queued(chat_id: str = "c1"):
    return ChatQueued(
        event_id=uuid.uuid4(),
        chat_id=chat_id,
        occurred_at=T0,
        producer="assigner",
        payload=ChatQueuedPayload(reason="new", waiting_since=T0, queued_at=T0),
    )


def test_a_started_assignment_arms_a_deadline_one_timeout_after_it_started():
    a = uuid.uuid4()
    changes = domain.plan_timer_changes([assigned(a, chat_id="c9", operator_id="op7")], 300)
    assert changes.disarm == ()
    assert changes.arm == (domain.Deadline(a, "c9", "op7", T0, T0 + timedelta(seconds=300)),)


def test_an_assignment_whose_queue_overrides_the_idle_timeout_gets_a_deadline_from_the_override():
    short, long_, plain = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    changes = domain.plan_timer_changes(
        [
            assigned(short, chat_id="c1", idle_timeout_s=30),
            assigned(long_, chat_id="c2", idle_timeout_s=1800),
            assigned(plain, chat_id="c3"),
        ],
        300,
    )
    assert {d.assignment_id: d.deadline - T0 for d in changes.arm} == {
        short: timedelta(seconds=30),
        long_: timedelta(seconds=1800),
        plain: timedelta(seconds=300),
    }


def test_messages_of_an_overridden_assignment_never_move_its_deadline_back_to_the_global_timeout():
    a = uuid.uuid4()

    def message(sender: str, seconds: int) -> MessageRecorded:
        at = T0 + timedelta(seconds=seconds)
        return MessageRecorded(
            event_id=uuid.uuid4(),
            chat_id="c1",
            occurred_at=at,
            producer="assigner",
            payload=MessageRecordedPayload(
                message_id=f"m{seconds}",
                sender=sender,
                operator_id="op2" if sender == "operator" else None,
                text="hi",
                recorded_at=at,
            ),
        )

    # The user writes on, another operator chips in: the held assignment keeps its queue's 45 s.
    batch = [assigned(a, idle_timeout_s=45), message("user", 5), message("operator", 10), message("user", 20)]
    changes = domain.plan_timer_changes(batch, 300)
    assert [(d.assignment_id, d.deadline) for d in changes.arm] == [(a, T0 + timedelta(seconds=45))]
    assert changes.disarm == ()
    later = domain.plan_timer_changes([message("user", 40), message("user", 44)], 300)
    assert later.empty  # a later batch of its messages neither re-arms nor disarms it


def test_an_ended_assignment_is_disarmed_whatever_its_outcome():
    ids = [uuid.uuid4() for _ in range(5)]
    outcomes = ["answered", "released", "timed_out", "reassigned", "completed"]
    changes = domain.plan_timer_changes([ended(a, outcome=o) for a, o in zip(ids, outcomes)], 300)
    assert changes.arm == ()
    assert [e.assignment_id for e in changes.disarm] == ids


def test_an_assignment_ending_later_in_the_same_batch_is_never_armed():
    a = uuid.uuid4()
    changes = domain.plan_timer_changes([assigned(a), ended(a)], 300)
    assert changes.arm == ()
    assert [e.assignment_id for e in changes.disarm] == [a]


def test_a_start_arriving_after_its_end_does_not_arm_a_dead_timer():
    a = uuid.uuid4()
    changes = domain.plan_timer_changes([ended(a), assigned(a)], 300)
    assert changes.arm == ()
    assert [e.assignment_id for e in changes.disarm] == [a]


def test_a_reassignment_disarms_the_old_assignment_and_arms_the_new_one():
    old, new = uuid.uuid4(), uuid.uuid4()
    later = T0 + timedelta(seconds=30)
    changes = domain.plan_timer_changes(
        [assigned(old), ended(old, outcome="reassigned", at=later), assigned(new, operator_id="op2", at=later)], 60
    )
    assert [d.assignment_id for d in changes.arm] == [new]
    assert changes.arm[0].deadline == later + timedelta(seconds=60)
    assert [e.assignment_id for e in changes.disarm] == [old]


def test_a_repeated_start_in_one_batch_arms_once_with_the_first_start():
    a = uuid.uuid4()
    changes = domain.plan_timer_changes([assigned(a), assigned(a, at=T0 + timedelta(seconds=9))], 10)
    assert len(changes.arm) == 1
    assert changes.arm[0].deadline == T0 + timedelta(seconds=10)


def test_facts_that_are_not_about_assignments_change_no_timer():
    changes = domain.plan_timer_changes([queued(), queued("c2")], 300)
    assert changes.empty


def test_the_idle_event_is_the_same_on_every_repeat_of_a_fire():
    d = domain.Deadline(uuid.uuid4(), "c1", "op1", T0, T0 + timedelta(seconds=300))
    first, second = domain.idle_fact(d), domain.idle_fact(d)
    assert encode(first) == encode(second)
    assert first.event_id == domain.idle_event_id(d.assignment_id)
    assert first.event_id != domain.idle_event_id(uuid.uuid4())


def test_the_idle_event_names_the_assignment_its_operator_and_deadline_and_passes_the_contract():
    d = domain.Deadline(uuid.uuid4(), "chat-42", "op1", T0, T0 + timedelta(seconds=300))
    decoded = TIMEOUTS.validate_json(encode(domain.idle_fact(d)))
    assert decoded.type == "assignment_idle"
    assert decoded.chat_id == "chat-42"
    assert decoded.producer == "idle_monitor"
    assert decoded.payload.assignment_id == d.assignment_id
    assert decoded.payload.operator_id == "op1"
    assert decoded.payload.deadline == d.deadline


def test_lateness_is_the_time_past_the_deadline_and_never_negative():
    d = domain.Deadline(uuid.uuid4(), "c1", "op1", T0, T0 + timedelta(seconds=10))
    assert domain.lateness_s(d, T0 + timedelta(seconds=10.25)) == 0.25
    assert domain.lateness_s(d, T0 + timedelta(seconds=9)) == 0.0
