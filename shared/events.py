"""The event contract of docs/contract.md §2: one envelope, one discriminated union per topic."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring  # type: ignore[attr-defined]
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
# ---- routing (docs/contract.md "Routing") ----------------------------------------------
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_QUEUE: Final = "default"
MAX_SKILLS = 8
PRIORITY_MAX = 9
QueueId = Annotated[str, Field(pattern=SLUG_PATTERN, description="Queue (team) id: a slug; `default` always exists.")]
Skill = Annotated[str, Field(pattern=SLUG_PATTERN, description="A skill: a slug.")]
Priority = Annotated[int, Field(ge=0, le=PRIORITY_MAX, description="0 (lowest) to 9; one point = priority_step_s.")]
OperatorStatus = Literal["available", "away", "offline"]
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


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetime must carry a timezone (UTC)")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters (PostgreSQL cannot store them)")
    return value


# Every datetime of the contract carries a zone; every free text is storable (no NUL). Checked on
# these fields alone, not by a validator on every field of every model: the consumers decode and
# the assigner builds several models per record, and a Python call per field was a measurable
# share of the worker's time per record (docs/performance.md, sixteenth session). Ids, queue ids
# and skills need no NUL check: their patterns (and the operator id's printable check) refuse it.
Instant = Annotated[datetime, AfterValidator(_aware)]
Text = Annotated[str, AfterValidator(_no_nul)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(_Strict):
    """Fields every event carries."""

    event_id: uuid.UUID = Field(description="Unique id; consumers apply each id once.")
    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Envelope version.")
    chat_id: ChatId
    occurred_at: Instant = Field(description="When the fact happened (UTC, ISO 8601).")
    producer: Text = Field(min_length=1, max_length=64, description="Who produced it.")


# ---- chat.inbound ---------------------------------------------------------------------


class Routing(_Strict):
    """A chat's routing attributes as a frontend (or an admin) sets them; each field given wins."""

    queue: QueueId | None = Field(default=None, description="Queue to wait in; unknown -> `default`.")
    priority: Priority | None = None
    skills: list[Skill] | None = Field(default=None, max_length=MAX_SKILLS, description="Skills a taker needs.")

    @field_validator("skills", mode="after")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))


class UserMessagePayload(_Strict):
    message_id: MessageId
    text: Text = Field(min_length=1, max_length=4000)
    sent_at: Instant | None = None
    routing: Routing | None = Field(default=None, description="Optional routing attributes (latest win).")

    @field_validator("sent_at", mode="after")
    @classmethod
    def _sent_at_in_window(cls, value: datetime | None) -> datetime | None:
        return check_sent_at(value)


class OperatorMessagePayload(_Strict):
    message_id: MessageId
    operator_id: OperatorId
    text: Text = Field(min_length=1, max_length=4000)
    sent_at: Instant | None = None

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
    deadline: Instant


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
    text: Text
    sent_at: Instant | None = None
    recorded_at: Instant
    assignment_id: uuid.UUID | None = Field(
        default=None, description="The author's active assignment on this chat, if any."
    )
    first_response_ms: int | None = Field(
        default=None, description="Set on the assigned operator's first message of an assignment."
    )


class ChatQueuedPayload(_Strict):
    reason: QueueReason
    waiting_since: Instant
    queued_at: Instant
    queue_id: QueueId = DEFAULT_QUEUE


class ChatAssignedPayload(_Strict):
    assignment_id: uuid.UUID
    operator_id: OperatorId
    assigned_at: Instant
    via: Literal["pull", "reassign"]
    queue_id: QueueId = DEFAULT_QUEUE
    first_wait_ms: int | None = Field(
        default=None,
        description="On a chat's first assignment since it was opened or reopened: ms it waited for it.",
    )
    sla_met: bool | None = Field(
        default=None, description="With first_wait_ms: whether it was within the queue's sla_first_assignment_s."
    )
    idle_timeout_s: int | None = Field(default=None, description="The queue's idle timeout override, if any.")


class AssignmentEndedPayload(_Strict):
    assignment_id: uuid.UUID
    operator_id: OperatorId
    outcome: Outcome
    started_at: Instant
    ended_at: Instant
    queue_id: QueueId = DEFAULT_QUEUE


class ChatAnsweredPayload(_Strict):
    operator_id: OperatorId
    answered_at: Instant
    queue_id: QueueId = DEFAULT_QUEUE


class ChatCompletedPayload(_Strict):
    completed_by: Text
    completed_at: Instant
    queue_id: QueueId = DEFAULT_QUEUE


class ChatRoutedPayload(_Strict):
    queue_id: QueueId = Field(description="The queue the chat is in now.")
    priority: Priority
    skills: list[Skill] = Field(max_length=MAX_SKILLS)
    previous_queue_id: QueueId | None = None
    requested_queue: Text | None = Field(default=None, description="Set when it named an unknown queue (fallback).")
    by: Literal["user_message", "admin", "queue_deleted"]
    routed_at: Instant


class OperatorStatusChangedPayload(_Strict):
    operator_id: OperatorId
    status: OperatorStatus
    previous_status: OperatorStatus
    by: Literal["self", "admin", "removed"]
    changed_at: Instant
    returned_chats: int = Field(default=0, ge=0, description="Held chats put back in their queues (offline).")


class ChatReopenedPayload(_Strict):
    reopened_at: Instant


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


class ChatRouted(Envelope):
    """The chat's routing attributes changed (queue, priority, skills)."""

    type: Literal["chat_routed"] = "chat_routed"
    payload: ChatRoutedPayload


class OperatorProfileChangedPayload(_Strict):
    operator_id: OperatorId
    display_name: Text = Field(default="", max_length=255)
    queues: list[QueueId] = Field(description="The queues it pulls from now (`default` alone once removed).")
    skills: list[Skill] = Field(default_factory=list)
    capacity: int | None = Field(default=None, ge=0, description="Null: SWITCHBOARD_OPERATOR_CAPACITY.")
    removed: bool = Field(default=False, description="The profile was deleted (or lost a deleted queue: false).")
    changed_at: Instant


class OperatorProfileChanged(Envelope):
    """An admin created, changed or removed an operator's profile. `chat_id` is operator_key(operator_id)."""

    type: Literal["operator_profile_changed"] = "operator_profile_changed"
    payload: OperatorProfileChangedPayload


class OperatorStatusChanged(Envelope):
    """An operator's presence changed. Its `chat_id` (the Kafka key) is operator_key(operator_id)."""

    type: Literal["operator_status_changed"] = "operator_status_changed"
    payload: OperatorStatusChangedPayload


def operator_key(operator_id: str) -> str:
    """The record key (envelope `chat_id`) of an operator's own facts: stable, so they stay in order."""
    return "operator:" + hashlib.sha256(operator_id.encode()).hexdigest()[:40]


LifecycleFact = (
    MessageRecorded
    | ChatQueued
    | ChatAssigned
    | AssignmentEnded
    | ChatAnswered
    | ChatCompleted
    | ChatReopened
    | ChatRouted
    | OperatorStatusChanged
    | OperatorProfileChanged
)
LifecycleEvent = Annotated[LifecycleFact, Field(discriminator="type")]
LIFECYCLE_TYPES = frozenset(m.model_fields["type"].default for m in LifecycleFact.__args__)
# Each fact's payload model and its type (encode_fact): every fact type has a payload model of its own.
_FACT_TYPES: dict[type[BaseModel], str] = {
    m.model_fields["payload"].annotation: m.model_fields["type"].default for m in LifecycleFact.__args__
}
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
    """A fresh id for an event (or any row the system creates): a UUIDv7 (RFC 9562).

    Its first 48 bits are the Unix time in milliseconds and the remaining 74 free bits random, so it is
    as unique as a UUIDv4 while ids made close in time sort close together: the primary-key indexes
    they are inserted into (the event-id claims, the outbox, assignments) grow at their right edge
    instead of at a random page, which dirties and logs fewer pages per insert.
    """
    return uuid7(time.time_ns() // 1_000_000)


# os.urandom is a system call; an id needs 10 random bytes. They are drawn 4,000 at a time (one call
# per 400 ids instead of one per id: the assigner makes two or three ids per record it applies), cut
# into 80-bit numbers, and handed out by an iterator: `next()` on it is one atomic step, so two
# threads never take the same number (a repeated event id would be skipped as a duplicate, and its
# event lost). Two threads refilling at once each draw fresh bytes. A forked child starts with an
# empty pool, so parent and child never hand out the same bytes.
_RANDOM_IDS = 400
_randoms: Iterator[int] = iter(())


def _random80() -> int:
    global _randoms
    while (drawn := next(_randoms, None)) is None:
        pool = os.urandom(10 * _RANDOM_IDS)
        _randoms = iter([int.from_bytes(pool[i : i + 10], "big") for i in range(0, len(pool), 10)])
    return drawn


def _forget_random() -> None:
    global _randoms
    _randoms = iter(())


os.register_at_fork(after_in_child=_forget_random)


def uuid7(unix_ms: int, random: bytes | None = None) -> uuid.UUID:
    """The UUIDv7 of a millisecond timestamp and 10 random bytes (from os.urandom, pooled, if not given)."""
    rand = int.from_bytes(random, "big") if random is not None else _random80()
    rand_a, rand_b = (rand >> 64) & 0xFFF, rand & ((1 << 62) - 1)
    return uuid.UUID(int=(unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def encode(event: BaseModel) -> bytes:
    """Serialise an event envelope to the JSON bytes put on Kafka."""
    return event.model_dump_json().encode()


_INSTANT_JSON = TypeAdapter(datetime)
_json_string = encode_basestring  # a JSON string as pydantic writes it (non-ASCII kept, controls escaped)
_ENVELOPE_JSON = (
    '{{"event_id":"{}","schema_version":1,"chat_id":{},"occurred_at":{},"producer":{},"type":"{}","payload":{}}}'
)


def encode_fact(
    event_id: uuid.UUID, chat_id: str, occurred_at: datetime, producer: str, fact_type: str, payload: BaseModel
) -> str:
    """A lifecycle fact's envelope JSON, exactly as `model_dump_json()` of its envelope model writes it,
    without building (and validating again) the envelope model: the assigner writes one per fact to
    its outbox, and building the model was a sixth of its worker's time (docs/performance.md,
    sixteenth session).

    The payload was validated when its model was built; a payload of another type's model is refused
    here (ValueError), as the envelope model would refuse it.
    """
    if _FACT_TYPES.get(type(payload)) != fact_type:
        raise ValueError(f"a {type(payload).__name__} is not the payload of a {fact_type!r} fact")
    return _ENVELOPE_JSON.format(
        event_id,
        _json_string(chat_id),
        _INSTANT_JSON.dump_json(_aware(occurred_at)).decode(),
        _json_string(producer),
        fact_type,
        payload.model_dump_json(),
    )


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
