"""Delivery's pure rules: what a chat stream shows and how its events are numbered."""

import uuid
from datetime import timedelta

from services.delivery import domain
from shared.events import (AssignmentEnded, AssignmentEndedPayload, ChatAssigned, ChatAssignedPayload,
                           MessageRecorded, MessageRecordedPayload, utcnow)


def message(chat, text, sender="user", operator_id=None, at=None):
    at = at or utcnow()
    return MessageRecorded(event_id=uuid.uuid4(), chat_id=chat, occurred_at=at, producer="t",
                           payload=MessageRecordedPayload(message_id=uuid.uuid4().hex, sender=sender,
                                                          operator_id=operator_id, text=text, recorded_at=at))


def test_messages_and_joins_are_shown_with_the_operators_display_name_and_assignment_ends_are_not():
    now = utcnow()
    joined = ChatAssigned(event_id=uuid.uuid4(), chat_id="c", occurred_at=now, producer="t",
                          payload=ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id="op-1",
                                                      assigned_at=now, via="pull"))
    ended = AssignmentEnded(event_id=uuid.uuid4(), chat_id="c", occurred_at=now, producer="t",
                            payload=AssignmentEndedPayload(assignment_id=uuid.uuid4(), operator_id="op-1",
                                                           outcome="answered", started_at=now, ended_at=now))
    shown = domain.stream_events([message("c", "hi"), joined, ended, message("c", "yo", "operator", "op-1")],
                                 now, 3600)
    assert [e.type for e in shown] == ["message", "operator_joined", "message"]
    assert shown[1].data["display_name"] == "op-1"
    assert shown[2].data["display_name"] == "op-1" and shown[2].data["sender"] == "operator"
    assert shown[0].data["display_name"] is None and shown[0].data["text"] == "hi"


def test_facts_older_than_the_replay_window_are_not_shown_again():
    now = utcnow()
    old = message("c", "old", at=now - timedelta(seconds=3601))
    assert [e.data["text"] for e in domain.stream_events([old, message("c", "new")], now, 3600)] == ["new"]


def test_each_chat_gets_its_reserved_block_in_partition_order():
    events = domain.stream_events([message("b", "b1"), message("a", "a1"), message("b", "b2"), message("a", "a2"),
                                   message("b", "b3")], utcnow(), 3600)
    assert domain.counts_per_chat(events) == {"a": 2, "b": 3}
    numbered = domain.number(events, {"a": 12, "b": 3})
    assert [(seq, e.data["text"]) for seq, e in numbered] == [(1, "b1"), (11, "a1"), (2, "b2"), (12, "a2"), (3, "b3")]
