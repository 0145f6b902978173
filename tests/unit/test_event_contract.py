"""The envelope models' own checks, and the facts' envelopes the assigner writes without building them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError, create_model

from shared import events

CONTRACT_MODELS = [
    m
    for m in vars(events).values()
    if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == events.__name__ and m.model_fields
]
AWARE = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _probe(model: type[BaseModel], name: str) -> type[BaseModel]:
    """A model of one field, declared exactly as `model` declares it (type, constraints, validators)."""
    field = model.model_fields[name]
    return create_model(f"{model.__name__}_{name}", value=(field.annotation, field))


FIELDS = [(m, name) for m in CONTRACT_MODELS for name in m.model_fields]


@pytest.mark.parametrize(("model", "name"), FIELDS, ids=[f"{m.__name__}.{n}" for m, n in FIELDS])
def test_no_field_of_the_contract_takes_a_nul_or_a_naive_time(model, name):
    probe = _probe(model, name)
    took_text = took_time = False
    try:
        probe(value="ok")
        took_text = True
    except ValidationError:
        pass
    try:
        probe(value=AWARE)
        took_time = True
    except ValidationError:
        pass
    if took_text:
        with pytest.raises(ValidationError, match="NUL|pattern|printable"):
            probe(value="o\x00k")
    if took_time:
        with pytest.raises(ValidationError, match="timezone"):
            probe(value=AWARE.replace(tzinfo=None))


def test_the_checks_cover_texts_and_times_of_the_contract():
    # The generic test above must reach the fields that matter: free texts and times.
    assert (events.UserMessagePayload, "text") in FIELDS and (events.Envelope, "occurred_at") in FIELDS
    with pytest.raises(ValidationError, match="NUL characters"):
        events.MessageRecordedPayload(message_id="m", sender="user", text="a\x00b", recorded_at=AWARE)
    with pytest.raises(ValidationError, match="must carry a timezone"):
        events.ChatAnsweredPayload(operator_id="op", answered_at=datetime(2026, 1, 1))


def _samples() -> list[tuple[str, BaseModel]]:
    """One payload of every fact type, with optional fields set and unset, odd texts and times."""
    t = AWARE
    plus_one = datetime(2026, 12, 5, 13, 0, 0, 120000, tzinfo=timezone(timedelta(hours=1)))
    a = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    return [
        (
            "message_recorded",
            events.MessageRecordedPayload(message_id="m-1", sender="user", text='hé "q" \\ \n\t☃', recorded_at=t),
        ),
        (
            "message_recorded",
            events.MessageRecordedPayload(
                message_id="m-2",
                sender="operator",
                operator_id="ops|ü 1",
                text="x",
                sent_at=plus_one,
                recorded_at=t.replace(microsecond=5),
                assignment_id=a,
                first_response_ms=12,
            ),
        ),
        ("chat_queued", events.ChatQueuedPayload(reason="new", waiting_since=t, queued_at=t, queue_id="billing")),
        (
            "chat_assigned",
            events.ChatAssignedPayload(
                assignment_id=a,
                operator_id="op",
                assigned_at=t,
                via="pull",
                first_wait_ms=3,
                sla_met=True,
                idle_timeout_s=60,
            ),
        ),
        ("chat_assigned", events.ChatAssignedPayload(assignment_id=a, operator_id="op", assigned_at=t, via="reassign")),
        (
            "assignment_ended",
            events.AssignmentEndedPayload(
                assignment_id=a, operator_id="op", outcome="timed_out", started_at=t, ended_at=t
            ),
        ),
        ("chat_answered", events.ChatAnsweredPayload(operator_id="op", answered_at=t)),
        ("chat_completed", events.ChatCompletedPayload(completed_by="admin:root", completed_at=t)),
        ("chat_reopened", events.ChatReopenedPayload(reopened_at=t)),
        (
            "chat_routed",
            events.ChatRoutedPayload(
                queue_id="default",
                priority=3,
                skills=["fr", "vip"],
                previous_queue_id="sales",
                requested_queue="gone",
                by="user_message",
                routed_at=t,
            ),
        ),
        (
            "operator_status_changed",
            events.OperatorStatusChangedPayload(
                operator_id="op",
                status="offline",
                previous_status="available",
                by="self",
                changed_at=t,
                returned_chats=2,
            ),
        ),
        (
            "operator_profile_changed",
            events.OperatorProfileChangedPayload(
                operator_id="op", display_name="Zoë", queues=["default"], changed_at=t
            ),
        ),
    ]


MODELS_BY_TYPE = {m.model_fields["type"].default: m for m in events.LifecycleFact.__args__}


@pytest.mark.parametrize(("fact_type", "payload"), _samples(), ids=[t for t, _ in _samples()])
@pytest.mark.parametrize(
    "at",
    [
        AWARE,
        AWARE.replace(microsecond=123456),
        datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_a_facts_envelope_is_what_its_envelope_model_writes(fact_type, payload, at):
    event_id = events.new_event_id()
    model = MODELS_BY_TYPE[fact_type](
        event_id=event_id, chat_id="chat-1.a:b", occurred_at=at, producer="assigner", payload=payload
    )
    written = events.encode_fact(event_id, "chat-1.a:b", at, "assigner", fact_type, payload)
    assert written == model.model_dump_json()
    assert events.LIFECYCLE.validate_json(written) == model


def test_every_fact_type_is_sampled():
    assert {t for t, _ in _samples()} == events.LIFECYCLE_TYPES


def test_a_payload_of_another_fact_type_or_a_naive_time_is_refused():
    payload = events.ChatAnsweredPayload(operator_id="op", answered_at=AWARE)
    with pytest.raises(ValueError, match="ChatAnsweredPayload is not the payload of a 'chat_completed' fact"):
        events.encode_fact(uuid.uuid4(), "c", AWARE, "assigner", "chat_completed", payload)
    with pytest.raises(ValueError, match="timezone"):
        events.encode_fact(uuid.uuid4(), "c", datetime(2026, 1, 1), "assigner", "chat_answered", payload)
    assert json.loads(events.encode_fact(uuid.uuid4(), "c", AWARE, "assigner", "chat_answered", payload))["type"] == (
        "chat_answered"
    )
