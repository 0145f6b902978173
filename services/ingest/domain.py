"""Ingest's pure model: what a frontend may post, the event it becomes, and which answer each key gets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# The one formatter of field errors (shared.errors); ingest's entry points call it as domain.field_errors.
from shared.errors import field_errors  # noqa: F401
from shared.events import (
    ID_PATTERN,
    OperatorId,
    OperatorMessage,
    OperatorMessagePayload,
    Routing,
    UserMessage,
    UserMessagePayload,
    check_sent_at,
    encode,
)

PRODUCER = "ingest"
MAX_BATCH = 500
# A single message is at most 4,000 characters; even fully \u-escaped astral text stays below this.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024  # 500 messages of 4,000 plain characters fit with room to spare


class _Forbidding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MessageIn(_Forbidding):
    """The body of `POST /v1/chats/{chat_id}/messages`."""

    message_id: str = Field(pattern=ID_PATTERN, description="Frontend-chosen id; retries reuse it.")
    sender: Literal["user", "operator"] = Field(description="Who wrote the message.")
    operator_id: OperatorId | None = Field(
        None,
        validate_default=True,
        description="Required when sender is `operator`, absent when it is `user`; printable text, 1 to 255 "
        "characters (a token's `sub`).",
    )
    text: str = Field(
        min_length=1,
        max_length=4000,
        pattern=r"^[^\x00]*$",
        description="1 to 4,000 characters, no NUL (PostgreSQL cannot store it).",
    )
    sent_at: datetime | None = Field(
        None,
        description="When the frontend saw it (ISO 8601 with a zone), from 2000-01-01T00:00:00Z to one hour "
        "after the current time.",
    )
    routing: Routing | None = Field(
        None,
        description='User messages only: `{"queue", "priority" (0-9), "skills" (up to 8 slugs)}`; the '
        "latest values given win; an unknown queue sends the chat to `default` (docs/contract.md, Routing).",
    )

    @field_validator("operator_id", mode="after")
    @classmethod
    def _operator_id_matches_sender(cls, value: str | None, info: ValidationInfo) -> str | None:
        sender = info.data.get("sender")
        if sender == "operator" and value is None:
            raise ValueError("operator_id is required when sender is 'operator'")
        if sender == "user" and value is not None:
            raise ValueError("operator_id must be absent when sender is 'user'")
        return value

    @field_validator("routing", mode="after")
    @classmethod
    def _routing_from_users(cls, value: Routing | None, info: ValidationInfo) -> Routing | None:
        if value is not None and info.data.get("sender") == "operator":
            raise ValueError("routing is only carried by user messages")
        return value

    @field_validator("sent_at", mode="after")
    @classmethod
    def _aware_and_in_window(cls, value: datetime | None) -> datetime | None:
        # The event model checks the same window, so a 202 here is never a dead letter downstream.
        return check_sent_at(value)


class BatchItemIn(MessageIn):
    """One message of `POST /v1/messages:batch`: a message body plus the chat it belongs to."""

    chat_id: str = Field(pattern=ID_PATTERN, description="The chat; also the Kafka key.")


class BatchIn(_Forbidding):
    """The body of `POST /v1/messages:batch`; items are validated one by one."""

    messages: list[Any] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} messages.")


class _ChatIdIn(_Forbidding):
    chat_id: str = Field(pattern=ID_PATTERN)


def check_chat_id(chat_id: str) -> None:
    """Raise ValidationError (field `chat_id`) unless the id matches ID_PATTERN."""
    _ChatIdIn(chat_id=chat_id)


@dataclass(frozen=True)
class Key:
    """The idempotency key of a message: one chat, one frontend-chosen message id."""

    chat_id: str
    message_id: str


@dataclass(frozen=True)
class Draft:
    """A valid message with the event it becomes if its key is new."""

    key: Key
    event_id: uuid.UUID
    envelope: bytes


@dataclass(frozen=True)
class Claim:
    """What the idempotency table holds for a key: its event id, the record to publish, whether Kafka acked it."""

    key: Key
    event_id: uuid.UUID
    envelope: bytes | None
    acked: bool


@dataclass(frozen=True)
class Accepted:
    """The answer for one message: its event id, and whether an earlier request already got it accepted."""

    event_id: uuid.UUID
    duplicate: bool


def to_event(
    chat_id: str, message: MessageIn, event_id: uuid.UUID, occurred_at: datetime
) -> OperatorMessage | UserMessage:
    """The `chat.inbound` envelope for a posted message."""
    if message.sender == "operator":
        assert message.operator_id is not None, "MessageIn's validator requires operator_id from an operator"
        by_operator = OperatorMessagePayload(
            message_id=message.message_id, operator_id=message.operator_id, text=message.text, sent_at=message.sent_at
        )
        return OperatorMessage(
            event_id=event_id, chat_id=chat_id, occurred_at=occurred_at, producer=PRODUCER, payload=by_operator
        )
    by_user = UserMessagePayload(
        message_id=message.message_id, text=message.text, sent_at=message.sent_at, routing=message.routing
    )
    return UserMessage(event_id=event_id, chat_id=chat_id, occurred_at=occurred_at, producer=PRODUCER, payload=by_user)


def draft(chat_id: str, message: MessageIn, event_id: uuid.UUID, occurred_at: datetime) -> Draft:
    """A Draft: the key and the exact record value to publish should the key be new."""
    event = to_event(chat_id, message, event_id, occurred_at)
    return Draft(Key(chat_id, message.message_id), event_id, encode(event))


def distinct(drafts: list[Draft]) -> list[Draft]:
    """The first draft of each key, in order (a batch may repeat a message)."""
    seen: set[Key] = set()
    out = []
    for d in drafts:
        if d.key not in seen:
            seen.add(d.key)
            out.append(d)
    return out


def to_publish(drafts: list[Draft], claims: dict[Key, Claim]) -> list[Claim]:
    """Unacknowledged claims, in request order: each is (re)published with its stored record and event id."""
    return [claims[d.key] for d in distinct(drafts) if not claims[d.key].acked]


def answers(drafts: list[Draft], claims: dict[Key, Claim], first_acks: set[Key]) -> list[Accepted]:
    """One answer per draft: `duplicate` is false exactly once per key, for the request whose ack was recorded first."""
    answered: set[Key] = set()
    out = []
    for d in drafts:
        fresh = d.key in first_acks and d.key not in answered
        answered.add(d.key)
        out.append(Accepted(claims[d.key].event_id, duplicate=not fresh))
    return out
