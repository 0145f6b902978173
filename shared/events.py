"""The event contract of docs/contract.md §2: one envelope, one discriminated union per topic."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# Final, so the type checker sees Literal[1] and accepts it as Envelope.schema_version's default.
SCHEMA_VERSION: Final = 1
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
OPERATOR_ID_MAX = 255

TOPIC_INBOUND = "chat.inbound"
TOPIC_TIMEOUTS = "chat.timeouts"
TOPIC_LIFECYCLE = "chat.lifecycle"
TOPIC_DLQ = "chat.dlq"
ALL_TOPICS = (TOPIC_INBOUND, TOPIC_TIMEOUTS, TOPIC_LIFECYCLE, TOPIC_DLQ)

ChatId = Annotated[str, Field(pattern=ID_PATTERN, description="Chat id; also the Kafka key.")]
MessageId = Annotated[str, Field(pattern=ID_PATTERN, description="Frontend-chosen message id.")]


def operator_id_problem(value: str) -> str | None:
    """Why `value` is not an operator id (None when it is one).

    Operator ids are identity providers' subjects: any printable text of 1 to 255 characters
    (emails, UUIDs, `auth0|123`, `/`, `%`, spaces, non-ASCII letters). Control, format and
    separator characters other than the plain space are refused: they break logs, URLs and
    metrics exposition, and PostgreSQL cannot store NUL.
    """
    if not value:
        return "must not be empty"
    if len(value) > OPERATOR_ID_MAX:
        return f"must be at most {OPERATOR_ID_MAX} characters (got {len(value)})"
    if not value.isprintable():
        return "must be printable text (no control, format or line-separator characters)"
    return None


def check_operator_id(value: str) -> str:
    """The operator id unchanged, or ValueError naming what is wrong with it."""
    problem = operator_id_problem(value)
    if problem is not None:
        raise ValueError(f"operator id {problem}")
    return value


OperatorId = Annotated[
    str,
    AfterValidator(check_operator_id),
    Field(
        min_length=1,
        max_length=OPERATOR_ID_MAX,
        description="Operator id (a token's `sub`): printable text, 1 to 255 characters.",
    ),
]
Outcome = Literal["answered", "released", "timed_out", "reassigned", "completed"]
Sender = Literal["user", "operator"]
QueueReason = Literal["new", "user_reply", "reopened", "released", "timed_out"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# The window a message's `sent_at` must fall in (docs/contract.md, "The sent_at window"). Every value
# inside it is storable as timestamptz and converts to UTC without leaving Python's datetime range
# (year 1 at +14:00 or year 9999 at -14:00 do not), so what ingest accepts the assigner can store.
# The future bound is Kafka's own default for producer clocks (message.timestamp.after.max.ms, 1 h);
# it only widens as time passes, so a record accepted at ingest still passes when it is consumed.
SENT_AT_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
SENT_AT_MAX_AHEAD = timedelta(hours=1)


def check_sent_at(value: datetime | None, now: datetime | None = None) -> datetime | None:
    """`value` if it carries a zone and lies in [SENT_AT_EARLIEST, now + SENT_AT_MAX_AHEAD]; else ValueError."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("sent_at must carry a timezone (UTC)")
    latest = (now or utcnow()) + SENT_AT_MAX_AHEAD
    if not SENT_AT_EARLIEST <= value <= latest:
        raise ValueError(
            f"sent_at must lie between {SENT_AT_EARLIEST.isoformat()} and "
            f"{int(SENT_AT_MAX_AHEAD.total_seconds())} s after the current time"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _aware(cls, value):
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("datetime must carry a timezone (UTC)")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("text must not contain NUL characters (PostgreSQL cannot store them)")
        return value


class Envelope(_Strict):
    """Fields every event carries."""

    event_id: uuid.UUID = Field(description="Unique id; consumers apply each id once.")
    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Envelope version.")
    chat_id: ChatId
    occurred_at: datetime = Field(description="When the fact happened (UTC, ISO 8601).")
    producer: str = Field(min_length=1, max_length=64, description="Who produced it.")


# ---- chat.inbound ---------------------------------------------------------------------


class UserMessagePayload(_Strict):
    message_id: MessageId
    text: str = Field(min_length=1, max_length=4000)
    sent_at: datetime | None = None

    @field_validator("sent_at", mode="after")
    @classmethod
    def _sent_at_in_window(cls, value: datetime | None) -> datetime | None:
        return check_sent_at(value)


class OperatorMessagePayload(_Strict):
    message_id: MessageId
    operator_id: OperatorId
    text: str = Field(min_length=1, max_length=4000)
    sent_at: datetime | None = None

    @field_validator("sent_at", mode="after")
    @classmethod
    def _sent_at_in_window(cls, value: datetime | None) -> datetime | None:
        return check_sent_at(value)


class UserMessage(Envelope):
    """A chat's user wrote something."""

    type: Literal["user_message"] = "user_message"
    payload: UserMessagePayload


class OperatorMessage(Envelope):
    """An operator wrote into a chat."""

    type: Literal["operator_message"] = "operator_message"
    payload: OperatorMessagePayload


InboundEvent = Annotated[UserMessage | OperatorMessage, Field(discriminator="type")]

# ---- chat.timeouts --------------------------------------------------------------------


class AssignmentIdlePayload(_Strict):
    assignment_id: uuid.UUID
    operator_id: OperatorId
    deadline: datetime


class AssignmentIdle(Envelope):
    """An assignment's operator stayed silent past the idle deadline."""

    type: Literal["assignment_idle"] = "assignment_idle"
    payload: AssignmentIdlePayload


TimeoutEvent = Annotated[AssignmentIdle, Field(discriminator="type")]

# ---- chat.lifecycle (facts written by the assigner) -----------------------------------


class MessageRecordedPayload(_Strict):
    message_id: MessageId
    sender: Sender
    operator_id: OperatorId | None = None
    text: str
    sent_at: datetime | None = None
    recorded_at: datetime
    assignment_id: uuid.UUID | None = Field(
        default=None, description="The author's active assignment on this chat, if any."
    )
    first_response_ms: int | None = Field(
        default=None, description="Set on the assigned operator's first message of an assignment."
    )


class ChatQueuedPayload(_Strict):
    reason: QueueReason
    waiting_since: datetime
    queued_at: datetime


class ChatAssignedPayload(_Strict):
    assignment_id: uuid.UUID
    operator_id: OperatorId
    assigned_at: datetime
    via: Literal["pull", "reassign"]


class AssignmentEndedPayload(_Strict):
    assignment_id: uuid.UUID
    operator_id: OperatorId
    outcome: Outcome
    started_at: datetime
    ended_at: datetime


class ChatAnsweredPayload(_Strict):
    operator_id: OperatorId
    answered_at: datetime


class ChatCompletedPayload(_Strict):
    completed_by: str
    completed_at: datetime


class ChatReopenedPayload(_Strict):
    reopened_at: datetime


class MessageRecorded(Envelope):
    """A user or operator message was stored (exactly once per chat and message id)."""

    type: Literal["message_recorded"] = "message_recorded"
    payload: MessageRecordedPayload


class ChatQueued(Envelope):
    """The chat entered (or re-entered) `waiting_assignment`."""

    type: Literal["chat_queued"] = "chat_queued"
    payload: ChatQueuedPayload


class ChatAssigned(Envelope):
    """An assignment started: the chat is `assigned` to an operator."""

    type: Literal["chat_assigned"] = "chat_assigned"
    payload: ChatAssignedPayload


class AssignmentEnded(Envelope):
    """An assignment ended, with its outcome."""

    type: Literal["assignment_ended"] = "assignment_ended"
    payload: AssignmentEndedPayload


class ChatAnswered(Envelope):
    """An operator answered: the chat waits for the real user's reply."""

    type: Literal["chat_answered"] = "chat_answered"
    payload: ChatAnsweredPayload


class ChatCompleted(Envelope):
    """The chat was completed by an admin or its operator."""

    type: Literal["chat_completed"] = "chat_completed"
    payload: ChatCompletedPayload


class ChatReopened(Envelope):
    """A completed chat received a user message and is open again."""

    type: Literal["chat_reopened"] = "chat_reopened"
    payload: ChatReopenedPayload


LifecycleFact = (
    MessageRecorded | ChatQueued | ChatAssigned | AssignmentEnded | ChatAnswered | ChatCompleted | ChatReopened
)
LifecycleEvent = Annotated[LifecycleFact, Field(discriminator="type")]
LIFECYCLE_TYPES = frozenset(m.model_fields["type"].default for m in LifecycleFact.__args__)
# Kafka header carrying the event type on records the assigner's relay publishes, so a consumer
# that acts on a few types skips the others without parsing them.
TYPE_HEADER = "type"

# CloudEvents 1.0, Kafka protocol binding, binary content mode: the record value stays the JSON
# envelope (the contract); these headers let standard tooling read the topics (docs/contract.md).
CE_SPECVERSION = "1.0"
CE_TYPE_PREFIX = "switchboard."
CE_SOURCE_PREFIX = "/switchboard/"


def rfc3339(at: datetime) -> str:
    """A timezone-aware datetime as RFC 3339 (UTC, `Z`), as CloudEvents' `time` wants it."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cloudevent_headers(
    event_id: uuid.UUID | str,
    event_type: str,
    source: str,
    time: datetime | str,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The `type` header and the CloudEvents binary-mode headers of one record.

    `event_type` is the envelope's `type`, `source` the producing service (or consumer group),
    `time` when the fact happened: a datetime, or the envelope's own `occurred_at` text (already
    RFC 3339: pydantic writes UTC as `...Z`). `content-type` is CloudEvents' `datacontenttype` in
    the Kafka binding (FastStream would otherwise send it empty for a bytes value).
    """
    return {
        "content-type": content_type,
        TYPE_HEADER: event_type,
        "ce_specversion": CE_SPECVERSION,
        "ce_id": str(event_id),
        "ce_type": CE_TYPE_PREFIX + event_type,
        "ce_source": CE_SOURCE_PREFIX + source,
        "ce_time": time if isinstance(time, str) else rfc3339(time),
    }


def event_headers(event: UserMessage | OperatorMessage | AssignmentIdle | LifecycleFact) -> dict[str, str]:
    """The record headers of an envelope about to be published (its `producer` is the source)."""
    return cloudevent_headers(event.event_id, event.type, event.producer, event.occurred_at)


def encoded_event_headers(value: bytes) -> dict[str, str]:
    """The record headers of an already encoded envelope (ingest republishes stored records as bytes)."""
    data = decode_json(value)
    return cloudevent_headers(data["event_id"], data["type"], data["producer"], data["occurred_at"])


INBOUND = TypeAdapter(InboundEvent)
TIMEOUTS = TypeAdapter(TimeoutEvent)
LIFECYCLE = TypeAdapter(LifecycleEvent)
# The envelope union of each envelope topic: what its consumers' handlers and its publishers declare.
PAYLOADS: dict[str, Any] = {
    TOPIC_INBOUND: InboundEvent,
    TOPIC_TIMEOUTS: TimeoutEvent,
    TOPIC_LIFECYCLE: LifecycleEvent,
}
ADAPTERS: dict[str, TypeAdapter] = {
    TOPIC_INBOUND: INBOUND,
    TOPIC_TIMEOUTS: TIMEOUTS,
    TOPIC_LIFECYCLE: LIFECYCLE,
}


def new_event_id() -> uuid.UUID:
    """A fresh random event id."""
    return uuid.uuid4()


def encode(event: BaseModel) -> bytes:
    """Serialise an event envelope to the JSON bytes put on Kafka."""
    return event.model_dump_json().encode()


def decode_json(raw: bytes | None) -> dict:
    """Parse a record value into a JSON object, or raise ValueError naming the problem."""
    if raw is None:
        raise ValueError("empty record value")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("record value is not a JSON object")
    return data
