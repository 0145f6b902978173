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
    ChatQueued,
    ChatQueuedPayload,
    ChatRouted,
    ChatRoutedPayload,
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
    # Postgres gives the event at place k of its stream's block the sequence last_seq - count + k.
    assert domain.positions(events) == [1, 1, 2, 2, 3]


def test_a_message_on_a_held_chat_shares_one_body_between_the_chat_and_the_operator_stream():
    a = uuid.uuid4()
    chat_event, operator_event = domain.plan([message("c", "hi")], {"c": Holder("op-1", a)}).events
    assert (chat_event.stream, operator_event.stream) == ("chat:c", "operator:op-1")
    assert chat_event.data is operator_event.data  # serialised once by the store


def test_wake_ups_fit_in_as_few_notify_payloads_as_postgres_accepts():
    assert domain.notify_payloads(["chat:a", "operator:op 1"]) == ["chat:a\noperator:op 1"]
    keys = [f"operator:{'x' * 250}-{i}" for i in range(100)]
    payloads = domain.notify_payloads(keys)
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    assert [k for p in payloads for k in p.split("\n")] == keys
    assert domain.notify_payloads([]) == []


def queued(chat, queue="default"):
    now = utcnow()
    return ChatQueued(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=now,
        producer="t",
        payload=ChatQueuedPayload(reason="new", waiting_since=now, queued_at=now, queue_id=queue),
    )


def routed(chat, queue):
    now = utcnow()
    return ChatRouted(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=now,
        producer="t",
        payload=ChatRoutedPayload(queue_id=queue, priority=0, skills=[], by="admin", routed_at=now),
    )


def completed(chat):
    return ChatCompleted(
        event_id=uuid.uuid4(),
        chat_id=chat,
        occurred_at=utcnow(),
        producer="t",
        payload=ChatCompletedPayload(completed_by="boss", completed_at=utcnow()),
    )


def test_queued_chats_count_in_their_queue_until_assigned_or_completed_and_routing_moves_a_waiting_chat():
    moves = domain.queue_moves(
        [queued("a"), queued("b", "sales"), queued("c"), routed("c", "sales"), assigned("a", "op-1", uuid.uuid4())],
        {},
    )
    assert moves.chats == {"b": "sales", "c": "sales"}
    assert moves.deltas == {"sales": 2}
    moves = domain.queue_moves([completed("b"), routed("x", "sales"), queued("c")], {"b": "sales", "c": "sales"})
    assert moves.chats == {"b": None, "c": "default"}
    assert moves.deltas == {"default": 1, "sales": -2}
    assert domain.queue_chats_of([queued("b"), message("z", "hi"), routed("a", "q")]) == ["a", "b"]


def test_a_repeated_or_unmatched_fact_never_counts_twice_or_below_zero():
    assert domain.queue_moves([queued("a"), queued("a")], {"a": "default"}).deltas == {}
    # Queued before delivery followed queues: leaving it changes nothing.
    left = domain.queue_moves([assigned("old", "op-1", uuid.uuid4()), completed("older")], {})
    assert (left.chats, left.deltas) == ({}, {})
    # A chat routed while nobody waits for it stays out of every queue.
    assert domain.queue_moves([routed("a", "sales")], {}).deltas == {}


def test_every_operator_is_in_the_default_queue_until_profiles_exist():
    assert domain.operator_queues("op-1") == ("default",)


def test_a_stream_gets_each_queues_depth_once_at_first_then_changes_at_most_once_a_second():
    send, due = domain.depth_updates(["default", "sales"], {"sales": 3}, {}, {}, now=100.0)
    assert (send, due) == ({"default": 0, "sales": 3}, None)
    sent, sent_at = dict(send), {"default": 100.0, "sales": 100.0}
    # Unchanged: nothing, nothing held back.
    assert domain.depth_updates(["default", "sales"], {"sales": 3}, sent, sent_at, now=100.2) == ({}, None)
    # Changed within the second: held back until it is due.
    assert domain.depth_updates(["default", "sales"], {"sales": 4}, sent, sent_at, now=100.2) == ({}, 101.0)
    assert domain.depth_updates(["default", "sales"], {"sales": 4}, sent, sent_at, now=101.0) == ({"sales": 4}, None)
    # Changed and changed back before it was due: nothing to say.
    assert domain.depth_updates(["default", "sales"], {"sales": 3}, sent, sent_at, now=101.5) == ({}, None)


def test_only_the_facts_some_webhook_endpoint_wants_are_queued_for_webhooks():
    facts = [message("c", "hi"), queued("c"), completed("c")]
    assert domain.webhook_facts(facts, frozenset()) == []
    assert domain.webhook_facts(facts, frozenset({"*", "chat_queued"})) == facts
    assert domain.webhook_facts(facts, frozenset({"chat_completed", "chat_queued"})) == facts[1:]


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
