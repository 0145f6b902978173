"""Pure rules of delivery: which lifecycle facts each stream shows, and their per-stream sequence.

No I/O here. A stream is a chat's (what the user's widget shows) or an operator's (what happens on
the chats it holds). The consumer plans a batch's stream events with `plan`, reserves each
stream's next sequence numbers in Postgres and numbers the events in partition order with `number`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.events import AssignmentEnded, ChatAssigned, ChatCompleted, Envelope, MessageRecorded


def chat_stream(chat_id: str) -> str:
    """The stream key of a chat's stream."""
    return f"chat:{chat_id}"


def operator_stream(operator_id: str) -> str:
    """The stream key of an operator's stream."""
    return f"operator:{operator_id}"


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream, before it has its sequence number."""

    stream: str
    event_id: uuid.UUID
    type: str
    occurred_at: datetime
    data: dict


@dataclass(frozen=True)
class Holder:
    """The operator holding a chat, and by which assignment."""

    operator_id: str
    assignment_id: uuid.UUID


@dataclass
class Plan:
    """What a batch adds: stream events in order, and the chats whose holder changed (None: nobody)."""

    events: list[StreamEvent] = field(default_factory=list)
    holders: dict[str, Holder | None] = field(default_factory=dict)


def display_name(operator_id: str | None) -> str | None:
    """What the user sees as the operator's name: its id until operator profiles exist."""
    return operator_id


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _event(stream: str, fact: Envelope, kind: str, data: dict) -> StreamEvent:
    body = {
        "type": kind,
        "chat_id": fact.chat_id,
        "event_id": str(fact.event_id),
        "occurred_at": _iso(fact.occurred_at),
        **data,
    }
    return StreamEvent(stream, fact.event_id, kind, fact.occurred_at, body)


def chats_of(facts: Iterable[Envelope]) -> list[str]:
    """The chats whose holder a batch needs to know, sorted."""
    return sorted({f.chat_id for f in facts if isinstance(f, (MessageRecorded, ChatAssigned, AssignmentEnded))})


def recent(facts: Iterable[Envelope], now: datetime, retention_s: float) -> list[Envelope]:
    """The facts inside the replay window.

    Older ones are not applied at all: their ids may already have been forgotten (pruned with the
    window), so a late redelivery must not be shown, sent, or move a holder, again.
    """
    oldest = now - timedelta(seconds=retention_s)
    return [f for f in facts if f.occurred_at >= oldest]


def plan(facts: Iterable[Envelope], holders: dict[str, Holder]) -> Plan:
    """The stream events of a batch of facts (in partition order), given who held their chats before it."""
    current: dict[str, Holder | None] = dict(holders)  # None: the chat's holder ended in this batch
    out = Plan()
    for fact in facts:
        chat = fact.chat_id
        if isinstance(fact, MessageRecorded):
            m = fact.payload
            data = {
                "message_id": m.message_id,
                "sender": m.sender,
                "operator_id": m.operator_id,
                "display_name": display_name(m.operator_id),
                "text": m.text,
                "sent_at": _iso(m.sent_at),
                "recorded_at": _iso(m.recorded_at),
            }
            out.events.append(_event(chat_stream(chat), fact, "message", data))
            holder = current.get(chat)
            if holder is not None:
                out.events.append(_event(operator_stream(holder.operator_id), fact, "message", data))
        elif isinstance(fact, ChatAssigned):
            p = fact.payload
            out.events.append(
                _event(
                    chat_stream(chat),
                    fact,
                    "operator_joined",
                    {
                        "operator_id": p.operator_id,
                        "display_name": display_name(p.operator_id),
                        "assigned_at": _iso(p.assigned_at),
                    },
                )
            )
            out.events.append(
                _event(
                    operator_stream(p.operator_id),
                    fact,
                    "assignment_started",
                    {"assignment_id": str(p.assignment_id), "assigned_at": _iso(p.assigned_at), "via": p.via},
                )
            )
            current[chat] = out.holders[chat] = Holder(p.operator_id, p.assignment_id)
        elif isinstance(fact, AssignmentEnded):
            e = fact.payload
            out.events.append(
                _event(
                    operator_stream(e.operator_id),
                    fact,
                    "assignment_ended",
                    {"assignment_id": str(e.assignment_id), "outcome": e.outcome, "ended_at": _iso(e.ended_at)},
                )
            )
            holder = current.get(chat)
            if holder is not None and holder.assignment_id == e.assignment_id:
                current[chat] = out.holders[chat] = None
        elif isinstance(fact, ChatCompleted):
            out.events.append(
                _event(chat_stream(chat), fact, "chat_completed", {"completed_at": _iso(fact.payload.completed_at)})
            )
    return out


def counts_per_stream(events: list[StreamEvent]) -> dict[str, int]:
    """How many sequence numbers each stream needs, streams sorted (a stable lock order)."""
    counts = Counter(e.stream for e in events)
    return {stream: counts[stream] for stream in sorted(counts)}


def number(events: list[StreamEvent], last_seqs: dict[str, int]) -> list[tuple[int, StreamEvent]]:
    """Give each event its sequence: its stream's reserved block, in the events' (partition) order.

    `last_seqs[stream]` is the stream's last sequence after reserving `counts_per_stream(events)[stream]`.
    """
    counts = counts_per_stream(events)
    next_seq = {stream: last_seqs[stream] - n + 1 for stream, n in counts.items()}
    out = []
    for e in events:
        out.append((next_seq[e.stream], e))
        next_seq[e.stream] += 1
    return out


def retry_delay(attempts: int, base_s: float, max_s: float, rand: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: exponential, capped, jittered.

    `rand` in [0, 1) picks a point in the upper half of the step, so retries of many deliveries
    spread out without ever coming sooner than half the step.
    """
    step = min(max_s, base_s * 2 ** max(0, min(attempts - 1, 40)))
    return step * (0.5 + rand / 2)


def webhook_outcome(status: int | None) -> str:
    """How a webhook attempt ended: delivered (2xx), rejected (another status, redirects included), error."""
    if status is None:
        return "error"
    return "delivered" if 200 <= status < 300 else "rejected"
