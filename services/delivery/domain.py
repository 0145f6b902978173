"""Pure rules of delivery: which lifecycle facts each stream shows, and their per-stream sequence.

No I/O here. A stream is a chat's (what the user's widget shows) or an operator's (what happens on
the chats it holds, and its queues' depth). The consumer plans a batch's stream events with `plan`
and numbers each stream's events in partition order (`positions`: Postgres adds them to the block
of sequence numbers it reserves for the stream). It follows which queue each chat waits in with
`queue_moves`; a stream sends a queue's depth when it changed, at most once a second
(`depth_updates`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from shared.events import (
    DEFAULT_QUEUE,
    AssignmentEnded,
    ChatAssigned,
    ChatCompleted,
    ChatQueued,
    ChatRouted,
    Envelope,
    MessageRecorded,
)

# Queue depth events: at most one per queue per stream this often (seconds).
DEPTH_EVERY_S = 1.0
# Postgres refuses a NOTIFY payload of 8,000 bytes or more: a poll's wake-ups are sent in chunks below it.
NOTIFY_MAX_BYTES = 7900
# In the set of event types webhook endpoints want: an endpoint wants every type.
ANY_TYPE = "*"


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
            shown = _event(chat_stream(chat), fact, "message", data)
            out.events.append(shown)
            holder = current.get(chat)
            if holder is not None:  # the same body (the store serialises it once)
                out.events.append(replace(shown, stream=operator_stream(holder.operator_id)))
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


def positions(events: list[StreamEvent]) -> list[int]:
    """Each event's place (1, 2, ...) among its stream's events of the batch, in the events' (partition) order.

    Postgres reserves `counts_per_stream(events)[stream]` sequence numbers for each stream; the
    event at place k gets the block's k-th: `last_seq - count + k`.
    """
    seen: Counter[str] = Counter()
    out = []
    for e in events:
        seen[e.stream] += 1
        out.append(seen[e.stream])
    return out


def notify_payloads(keys: Iterable[str], max_bytes: int = NOTIFY_MAX_BYTES) -> list[str]:
    """The keys joined by newlines into as few NOTIFY payloads as fit (usually one).

    A newline never occurs in a stream key: chat ids are `[A-Za-z0-9._:-]` and operator ids printable.
    """
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for key in keys:
        n = len(key.encode()) + 1
        if chunk and size + n > max_bytes:
            out.append("\n".join(chunk))
            chunk, size = [], 0
        chunk.append(key)
        size += n
    if chunk:
        out.append("\n".join(chunk))
    return out


# ---- queue depth ------------------------------------------------------------------------


def operator_queues(operator_id: str) -> tuple[str, ...]:
    """The queues whose depth an operator's stream shows.

    Every operator is a member of `default` only until operator profiles exist (the assigner's
    §8 work, in progress). This is the one place to change: a later change feeds it from the
    operators' profiles (operator facts on chat.lifecycle, or the assigner's API).
    """
    return (DEFAULT_QUEUE,)


def queue_chats_of(facts: Iterable[Envelope]) -> list[str]:
    """The chats of a batch whose waiting queue matters (queued, assigned, completed, routed), sorted."""
    kinds = (ChatQueued, ChatAssigned, ChatCompleted, ChatRouted)
    return sorted({f.chat_id for f in facts if isinstance(f, kinds)})


@dataclass
class QueueMoves:
    """What a batch changes in the queues: each chat's new waiting queue (None: not waiting), depth deltas."""

    chats: dict[str, str | None] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)


def queue_moves(facts: Iterable[Envelope], waiting: Mapping[str, str]) -> QueueMoves:
    """Which queue each chat waits in after a batch (in partition order), given where they waited before it.

    `chat_queued` enters its queue (or moves there), `chat_assigned` and `chat_completed` leave it,
    `chat_routed` moves a waiting chat to its new queue (a chat that is not waiting stays out).
    Depth is counted from these per-chat states, so a repeated fact never counts twice and a chat
    that left a queue it was never seen entering (queued before delivery followed queues) never
    makes a depth negative.
    """
    current: dict[str, str | None] = dict(waiting)
    for fact in facts:
        chat = fact.chat_id
        if isinstance(fact, ChatQueued):
            current[chat] = fact.payload.queue_id
        elif isinstance(fact, (ChatAssigned, ChatCompleted)):
            current[chat] = None
        elif isinstance(fact, ChatRouted) and current.get(chat) is not None:
            current[chat] = fact.payload.queue_id
    out = QueueMoves()
    for chat, now in sorted(current.items()):
        before = waiting.get(chat)
        if now == before:
            continue
        out.chats[chat] = now
        if before is not None:
            out.deltas[before] = out.deltas.get(before, 0) - 1
        if now is not None:
            out.deltas[now] = out.deltas.get(now, 0) + 1
    out.deltas = {q: n for q, n in sorted(out.deltas.items()) if n != 0}  # sorted: a stable lock order
    return out


def depth_updates(
    queues: Sequence[str],
    depths: Mapping[str, int],
    sent: Mapping[str, int],
    sent_at: Mapping[str, float],
    now: float,
    every_s: float = DEPTH_EVERY_S,
) -> tuple[dict[str, int], float | None]:
    """The queue depths a stream sends now, and when a held-back one is due (None: nothing held back).

    A queue's depth is sent when it differs from what the stream last sent (a queue never sent yet:
    always, so a stream opens with the current depths), but not sooner than `every_s` after the
    queue's last one. A queue without a count yet has no chat waiting.
    """
    send: dict[str, int] = {}
    due: float | None = None
    for q in queues:
        depth = depths.get(q, 0)
        if q in sent and sent[q] == depth:
            continue
        at = sent_at.get(q)
        if at is None or now - at >= every_s:
            send[q] = depth
        else:
            due = min(due, at + every_s) if due is not None else at + every_s
    return send, due


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


def webhook_facts(facts: Iterable[Envelope], wanted: frozenset[str]) -> list[Envelope]:
    """The facts some webhook endpoint wants: `wanted` holds their types, `*` for every type (empty: no endpoint)."""
    if not wanted:
        return []
    if ANY_TYPE in wanted:
        return list(facts)
    return [f for f in facts if f.type in wanted]  # type: ignore[attr-defined]  # every fact has a type
