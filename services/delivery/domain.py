"""Pure rules of delivery: which lifecycle facts a chat's stream shows, and their per-chat sequence.

No I/O here. The consumer turns a batch of facts into stream events, reserves each chat's next
sequence numbers in Postgres and numbers the events in partition order with `number`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from shared.events import ChatAssigned, ChatCompleted, MessageRecorded

# Lifecycle fact type -> the SSE `event` name a chat stream shows it as.
STREAM_TYPES = {
    "message_recorded": "message",
    "chat_assigned": "operator_joined",
    "chat_completed": "chat_completed",
}
WANTED_TYPES = frozenset(STREAM_TYPES)


@dataclass(frozen=True)
class StreamEvent:
    """One event of a chat's stream, before it has its sequence number."""

    chat_id: str
    event_id: uuid.UUID
    type: str
    occurred_at: datetime
    data: dict


def display_name(operator_id: str | None) -> str | None:
    """What the user sees as the operator's name: its id until operator profiles exist."""
    return operator_id


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def stream_event(event) -> StreamEvent | None:
    """The chat stream's view of a lifecycle fact, or None for facts the user does not see."""
    if isinstance(event, MessageRecorded):
        p = event.payload
        data = {"message_id": p.message_id, "sender": p.sender, "operator_id": p.operator_id,
                "display_name": display_name(p.operator_id), "text": p.text, "sent_at": _iso(p.sent_at),
                "recorded_at": _iso(p.recorded_at)}
    elif isinstance(event, ChatAssigned):
        p = event.payload
        data = {"operator_id": p.operator_id, "display_name": display_name(p.operator_id),
                "assigned_at": _iso(p.assigned_at)}
    elif isinstance(event, ChatCompleted):
        data = {"completed_at": _iso(event.payload.completed_at)}
    else:
        return None
    kind = STREAM_TYPES[event.type]
    data = {"type": kind, "chat_id": event.chat_id, "event_id": str(event.event_id),
            "occurred_at": _iso(event.occurred_at), **data}
    return StreamEvent(event.chat_id, event.event_id, kind, event.occurred_at, data)


def stream_events(events: Iterable, now: datetime, retention_s: float) -> list[StreamEvent]:
    """The stream events of a batch, in order; facts older than the replay window are dropped.

    Their ids may already have been forgotten (pruned with the window), so a late redelivery of
    one must not be shown again as new.
    """
    oldest = now - timedelta(seconds=retention_s)
    out = []
    for event in events:
        shown = stream_event(event)
        if shown is not None and shown.occurred_at >= oldest:
            out.append(shown)
    return out


def counts_per_chat(events: list[StreamEvent]) -> dict[str, int]:
    """How many sequence numbers each chat needs, chats sorted (a stable lock order)."""
    counts = Counter(e.chat_id for e in events)
    return {chat: counts[chat] for chat in sorted(counts)}


def number(events: list[StreamEvent], last_seqs: dict[str, int]) -> list[tuple[int, StreamEvent]]:
    """Give each event its sequence: a chat's reserved block, in the events' (partition) order.

    `last_seqs[chat]` is the chat's last sequence after reserving `counts_per_chat(events)[chat]`.
    """
    counts = counts_per_chat(events)
    next_seq = {chat: last_seqs[chat] - n + 1 for chat, n in counts.items()}
    out = []
    for e in events:
        out.append((next_seq[e.chat_id], e))
        next_seq[e.chat_id] += 1
    return out
