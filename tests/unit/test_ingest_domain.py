"""Ingest's pure model: request validation, the event a message becomes, who gets `duplicate: false`."""

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.ingest import domain
from services.ingest.domain import Claim, Key, MessageIn
from shared.events import INBOUND

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def first_field(**body) -> str:
    with pytest.raises(ValidationError) as exc:
        MessageIn.model_validate(body)
    return domain.field_errors(exc.value)[0]["field"]


def test_a_user_message_needs_id_sender_and_text_only():
    msg = MessageIn(message_id="m-1", sender="user", text="hey")
    assert msg.operator_id is None and msg.sent_at is None


def test_an_operator_message_without_operator_id_names_operator_id():
    assert first_field(message_id="m-1", sender="operator", text="hi") == "operator_id"


def test_a_user_message_with_an_operator_id_names_operator_id():
    assert first_field(message_id="m-1", sender="user", operator_id="op-1", text="hi") == "operator_id"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"message_id": "m-1", "sender": "user", "text": ""}, "text"),
        ({"message_id": "m-1", "sender": "user", "text": "é" * 4001}, "text"),
        ({"message_id": "m/1", "sender": "user", "text": "x"}, "message_id"),
        ({"message_id": "m-1", "sender": "robot", "text": "x"}, "sender"),
        ({"message_id": "m-1", "sender": "user", "text": "x", "color": "red"}, "color"),
        ({"message_id": "m-1", "sender": "user", "text": "x", "sent_at": "2026-01-01T00:00:00"}, "sent_at"),
    ],
)
def test_invalid_fields_are_named(body, field):
    assert first_field(**body) == field


def test_4000_characters_are_allowed():
    assert len(MessageIn(message_id="m-1", sender="user", text="é" * 4000).text) == 4000


def test_a_chat_id_outside_the_pattern_is_named_chat_id():
    with pytest.raises(ValidationError) as exc:
        domain.check_chat_id("a" * 129)
    assert domain.field_errors(exc.value)[0]["field"] == "chat_id"


def test_a_batch_item_error_names_the_item_field():
    with pytest.raises(ValidationError) as exc:
        domain.BatchItemIn.model_validate({"message_id": "m", "sender": "user", "text": "x"})
    assert domain.field_errors(exc.value)[0]["field"] == "chat_id"


def test_a_draft_carries_a_valid_inbound_envelope_keyed_by_its_chat():
    event_id = uuid.uuid4()
    msg = MessageIn(message_id="m-1", sender="operator", operator_id="op-1", text="hello", sent_at=AT)
    draft = domain.draft("chat-1", msg, event_id, AT)
    event = INBOUND.validate_json(draft.envelope)
    assert draft.key == Key("chat-1", "m-1") and draft.event_id == event.event_id == event_id
    assert event.type == "operator_message" and event.chat_id == "chat-1" and event.producer == "ingest"
    assert event.payload.operator_id == "op-1" and event.payload.sent_at == AT


def _draft(chat: str, message_id: str):
    return domain.draft(chat, MessageIn(message_id=message_id, sender="user", text="x"), uuid.uuid4(), AT)


def test_only_unacknowledged_keys_are_published_in_request_order_once_each():
    drafts = [_draft("c", "m-3"), _draft("c", "m-1"), _draft("c", "m-3"), _draft("c", "m-2")]
    claims = {d.key: Claim(d.key, d.event_id, d.envelope, acked=d.key.message_id == "m-2") for d in drafts}
    assert [c.key.message_id for c in domain.to_publish(drafts, claims)] == ["m-3", "m-1"]


def test_duplicate_is_false_exactly_once_per_key_for_the_request_that_recorded_the_ack():
    a, a_again, b = _draft("c", "m-1"), _draft("c", "m-1"), _draft("c", "m-2")
    stored_a = Claim(a.key, uuid.uuid4(), None, acked=True)
    claims = {a.key: stored_a, b.key: Claim(b.key, b.event_id, b.envelope, acked=False)}
    answers = domain.answers([a, b, a_again], claims, first_acks={b.key})
    assert [x.duplicate for x in answers] == [True, False, True]
    # Every answer carries the stored event id, not the one drafted for this request.
    assert answers[0].event_id == answers[2].event_id == stored_a.event_id
    assert answers[1].event_id == b.event_id
    twice = domain.answers([b, b], claims, first_acks={b.key})
    assert [x.duplicate for x in twice] == [False, True]
