"""Every row of the docs/contract.md §3 table, on the pure state machine."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.assigner import allocation
from services.assigner import domain as d

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def user(mid="m1", s=0):
    return d.ReceiveUserMessage(message_id=mid, text="hey", sent_at=None, at=at(s))


def oper(op, mid="o1", s=0):
    return d.ReceiveOperatorMessage(message_id=mid, operator_id=op, text="hello", sent_at=None, at=at(s))


def types(decision):
    return [f.type for f in decision.facts]


def new_chat():
    return d.decide(None, user(), "c1").chat


def assigned_to(op, s=1):
    return d.decide(new_chat(), d.AssignToPuller(op, uuid.uuid4(), at(s))).chat


def test_a_first_user_message_queues_a_new_chat():
    decision = d.decide(None, user(), "c1")
    assert decision.chat.state == d.WAITING
    assert decision.chat.waiting_since == decision.chat.queued_at == at(0)
    assert decision.chat.message_count == 1
    assert types(decision) == ["message_recorded", "chat_queued"]


def test_a_user_message_while_waiting_only_counts():
    decision = d.decide(new_chat(), user("m2", 5))
    assert decision.chat.state == d.WAITING and decision.chat.message_count == 2
    assert decision.chat.waiting_since == at(0)
    assert types(decision) == ["message_recorded"]


def test_a_user_message_while_assigned_keeps_the_same_operator():
    chat = assigned_to("A")
    decision = d.decide(chat, user("m2", 5))
    assert decision.chat.state == d.ASSIGNED and decision.chat.assigned_operator_id == "A"
    assert decision.facts[0].payload.assignment_id == chat.assignment_id


def test_a_user_reply_after_an_answer_joins_the_tail_of_the_queue():
    chat = d.decide(assigned_to("A"), oper("A", s=2)).chat
    decision = d.decide(chat, user("m2", 9))
    assert decision.chat.state == d.WAITING
    assert decision.chat.waiting_since == decision.chat.queued_at == at(9)
    assert decision.chat.last_operator_id == "A"
    assert decision.facts[-1].payload.reason == "user_reply"


def test_a_user_message_reopens_a_completed_chat():
    chat = d.decide(new_chat(), d.CompleteChat(by="admin:x", at=at(1))).chat
    decision = d.decide(chat, user("m2", 3))
    assert decision.chat.state == d.WAITING
    assert types(decision) == ["message_recorded", "chat_reopened", "chat_queued"]


def test_pulling_assigns_a_waiting_chat():
    aid = uuid.uuid4()
    decision = d.decide(new_chat(), d.AssignToPuller("A", aid, at(1)))
    assert decision.chat.state == d.ASSIGNED and decision.chat.assignment_id == aid
    assert decision.facts[0].payload.via == "pull"


def test_the_assigned_operators_reply_answers_and_frees_them():
    chat = assigned_to("A", s=1)
    decision = d.decide(chat, oper("A", s=3.5))
    new = decision.chat
    assert new.state == d.WAITING_USER and new.assigned_operator_id is None and new.assignment_id is None
    assert new.last_operator_id == "A" and new.operator_replied_at == at(3.5)
    assert types(decision) == ["message_recorded", "assignment_ended", "chat_answered"]
    assert decision.facts[0].payload.first_response_ms == 2500
    assert decision.facts[1].payload.outcome == "answered"


def test_an_operator_message_to_a_waiting_chat_answers_it():
    decision = d.decide(new_chat(), oper("B", s=2))
    assert decision.chat.state == d.WAITING_USER
    assert types(decision) == ["message_recorded", "chat_answered"]


def test_another_operators_message_is_stored_but_changes_no_state():
    chat = assigned_to("A")
    decision = d.decide(chat, oper("B", s=2))
    assert decision.chat.state == d.ASSIGNED and decision.chat.assigned_operator_id == "A"
    assert decision.chat.message_count == chat.message_count + 1
    assert types(decision) == ["message_recorded"]
    assert decision.facts[0].payload.operator_id == "B" and decision.facts[0].payload.first_response_ms is None


def test_release_keeps_the_queue_position_and_marks_the_releaser():
    chat = assigned_to("A")
    decision = d.decide(chat, d.ReleaseAssignment("A", chat.assignment_id, at(7)))
    assert decision.chat.state == d.WAITING
    assert decision.chat.waiting_since == at(0) and decision.chat.queued_at == at(7)
    assert decision.chat.last_operator_id == "A"
    assert decision.facts[0].payload.outcome == "released"


def test_release_of_someone_elses_assignment_is_refused():
    chat = assigned_to("A")
    with pytest.raises(d.NotYourAssignment):
        d.decide(chat, d.ReleaseAssignment("B", chat.assignment_id, at(7)))
    with pytest.raises(d.AssignmentNotActive):
        d.decide(chat, d.ReleaseAssignment("A", uuid.uuid4(), at(7)))


def test_an_idle_timeout_for_the_current_assignment_requeues_and_excludes_the_idle_operator():
    chat = assigned_to("A")
    decision = d.decide(chat, d.TimeOutAssignment(chat.assignment_id, at(300)))
    assert decision.chat.state == d.WAITING and decision.chat.last_operator_id == "A"
    assert decision.chat.waiting_since == at(0) and decision.chat.queued_at == at(300)
    assert decision.facts[0].payload.outcome == "timed_out"
    assert not allocation.may_pull(decision.chat, "A", at(301), cooldown_s=60)
    assert allocation.may_pull(decision.chat, "B", at(301), cooldown_s=60)


def test_a_stale_idle_timeout_changes_nothing():
    chat = assigned_to("A")
    assert d.decide(chat, d.TimeOutAssignment(uuid.uuid4(), at(300))) == d.Decision(None)
    waiting = new_chat()
    assert d.decide(waiting, d.TimeOutAssignment(uuid.uuid4(), at(300))) == d.Decision(None)


def test_an_admin_reassignment_ends_the_old_assignment_and_starts_a_new_one():
    chat = assigned_to("A")
    new_id = uuid.uuid4()
    decision = d.decide(chat, d.ReassignChat("X", new_id, at(9)))
    assert decision.chat.assigned_operator_id == "X" and decision.chat.assignment_id == new_id
    assert decision.chat.last_operator_id == "X"
    assert types(decision) == ["assignment_ended", "chat_assigned"]
    assert decision.facts[0].payload.outcome == "reassigned"


def test_a_completed_chat_cannot_be_reassigned():
    chat = d.decide(new_chat(), d.CompleteChat(by="admin:x", at=at(1))).chat
    with pytest.raises(d.ChatIsCompleted):
        d.decide(chat, d.ReassignChat("X", uuid.uuid4(), at(9)))


@pytest.mark.parametrize("state", ["waiting", "assigned", "answered"])
def test_complete_from_any_state_ends_an_active_assignment(state):
    chat = {
        "waiting": new_chat(),
        "assigned": assigned_to("A"),
        "answered": d.decide(assigned_to("A"), oper("A", s=2)).chat,
    }[state]
    decision = d.decide(chat, d.CompleteChat(by="admin:x", at=at(10)))
    assert decision.chat.state == d.COMPLETED and decision.chat.assigned_operator_id is None
    expected = ["assignment_ended", "chat_completed"] if state == "assigned" else ["chat_completed"]
    assert types(decision) == expected


def test_the_last_operator_gets_the_chat_back_after_the_cooldown():
    chat = assigned_to("A")
    chat = d.decide(chat, d.ReleaseAssignment("A", chat.assignment_id, at(10))).chat
    assert not allocation.may_pull(chat, "A", at(69.9), cooldown_s=60)
    assert allocation.may_pull(chat, "A", at(70), cooldown_s=60)
