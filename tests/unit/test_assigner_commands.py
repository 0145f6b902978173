"""The assigner's command rules without a database: event -> command, ownership and capacity checks,
the transaction's write set, and the API's answer to each domain refusal."""

import uuid

import pytest

from services.assigner import api
from services.assigner import domain as d
from services.assigner.repository import Changes
from shared.events import AssignmentIdle, AssignmentIdlePayload, ChatCompleted, ChatCompletedPayload
from tests.harness import operator_message, user_message
from tests.unit.test_assigner_domain import assigned_to, at, oper, user


def test_each_inbound_event_maps_to_its_command_at_the_time_given():
    msg = user_message("c1", "hey", message_id="m1")
    assert d.command_of(msg, at(3)) == d.ReceiveUserMessage(message_id="m1", text="hey", sent_at=None, at=at(3))
    reply = operator_message("c1", "alice@example.com", "hi", message_id="o1")
    assert d.command_of(reply, at(4)) == d.ReceiveOperatorMessage(
        message_id="o1", operator_id="alice@example.com", text="hi", sent_at=None, at=at(4)
    )
    assignment = uuid.uuid4()
    idle = AssignmentIdle(
        event_id=uuid.uuid4(),
        chat_id="c1",
        occurred_at=at(0),
        producer="test",
        payload=AssignmentIdlePayload(assignment_id=assignment, operator_id="A", deadline=at(0)),
    )
    assert d.command_of(idle, at(5)) == d.TimeOutAssignment(assignment_id=assignment, at=at(5))


def test_a_lifecycle_fact_is_not_a_command_of_the_assigner():
    fact = ChatCompleted(
        event_id=uuid.uuid4(),
        chat_id="c1",
        occurred_at=at(0),
        producer="assigner",
        payload=ChatCompletedPayload(completed_by="admin:x", completed_at=at(0)),
    )
    with pytest.raises(TypeError):
        d.command_of(fact, at(1))


def record(operator="A", ended=False):
    return d.AssignmentRecord(uuid.uuid4(), "c1", operator, at(2) if ended else None, "released" if ended else None)


def test_an_operator_ends_only_an_assignment_that_exists_is_theirs_and_is_active():
    missing = uuid.uuid4()
    with pytest.raises(d.UnknownAssignment):
        d.ending_command("release", "A", missing, None, at(5))
    theirs = record("B")
    with pytest.raises(d.NotYourAssignment):
        d.ending_command("release", "A", theirs.assignment_id, theirs, at(5))
    ended = record("A", ended=True)
    with pytest.raises(d.AssignmentNotActive, match="released"):
        d.ending_command("complete", "A", ended.assignment_id, ended, at(5))


def test_a_release_and_a_completion_become_their_commands():
    mine = record("A")
    assert d.ending_command("release", "A", mine.assignment_id, mine, at(5)) == d.ReleaseAssignment(
        "A", mine.assignment_id, at(5)
    )
    assert d.ending_command("complete", "A", mine.assignment_id, mine, at(5)) == d.CompleteChat(
        by="operator:A", at=at(5), assignment_id=mine.assignment_id, operator_id="A"
    )


def test_a_reassignment_needs_room_unless_the_operator_already_holds_that_chat():
    d.check_room("A", "c3", ["c1"], capacity=2)
    d.check_room("A", "c1", ["c1", "c2"], capacity=2)  # already theirs: a no-op, not a refusal
    with pytest.raises(d.OperatorAtCapacity, match="2 chat"):
        d.check_room("A", "c3", ["c1", "c2"], capacity=2)


def test_an_operator_id_no_event_could_carry_is_an_invalid_command():
    d.check_operator_id("auth0|bob")
    for bad in ("", "bad\nsub", "x" * 256):
        with pytest.raises(d.InvalidCommand, match="operator id"):
            d.check_operator_id(bad)


def test_the_write_set_numbers_messages_and_names_who_held_the_chat_then():
    changes = Changes()
    first = d.decide(None, user("m1"), "c1")
    changes.add("c1", None, first, at(0))
    held = assigned_to("A")
    event_id = uuid.uuid4()
    reply = d.decide(held, oper("A", "o1", s=3))
    changes.add("c1", held, reply, at(3), event_id)
    assert changes.message_seq == [1, 2] and changes.handled_by == [None, "A"]
    assert changes.message_event_ids[1] == event_id
    assert changes.ended_assignments() == {held.assignment_id}
    assert changes.chats["c1"].state == d.WAITING_USER


# The statuses and codes the API answered before domain errors stopped carrying them (docs/contract.md).
ANSWERS = [
    (d.UnknownChat, 404, "chat_not_found"),
    (d.UnknownAssignment, 404, "assignment_not_found"),
    (d.NotYourAssignment, 403, "not_your_assignment"),
    (d.AssignmentNotActive, 409, "assignment_not_active"),
    (d.ChatIsCompleted, 409, "chat_completed"),
    (d.OperatorAtCapacity, 409, "operator_at_capacity"),
    (d.InvalidCommand, 422, "invalid_command"),
    (d.ChatNotWaiting, 409, "conflict"),
    (d.DomainError, 409, "conflict"),
]


@pytest.mark.parametrize(("error", "status", "code"), ANSWERS, ids=[a[0].__name__ for a in ANSWERS])
def test_the_api_answers_each_domain_refusal_with_its_status_and_code(error, status, code):
    answer = api.domain_error(error("why"))
    assert (answer.status, answer.code, answer.message) == (status, code, "why")


def test_domain_errors_carry_no_http_status():
    for error, _, _ in ANSWERS:
        assert not hasattr(error("x"), "status") and not hasattr(error("x"), "code")


def test_every_refusal_of_the_domain_has_an_answer_of_its_own():
    named = {e for e in vars(d).values() if isinstance(e, type) and issubclass(e, d.DomainError)}
    assert named == {a[0] for a in ANSWERS}
