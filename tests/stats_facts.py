"""Lifecycle facts for stats tests, and a ledger that writes the assigner rows those facts describe.

The ledger plays the assigner's part without its code: every action appends the facts the
assigner would publish on chat.lifecycle and keeps the rows it would store, so a test can check
stats against a recount of exactly those rows (`switchboard reconcile`).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.events import (
    DEFAULT_QUEUE,
    TOPIC_LIFECYCLE,
    AssignmentEnded,
    AssignmentEndedPayload,
    ChatAnswered,
    ChatAnsweredPayload,
    ChatAssigned,
    ChatAssignedPayload,
    ChatCompleted,
    ChatCompletedPayload,
    ChatQueued,
    ChatQueuedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    encode,
    new_event_id,
)
from shared.kafka import make_producer


def message_recorded(
    chat_id: str,
    sender: str,
    at: datetime,
    *,
    operator_id: str | None = None,
    assignment_id: uuid.UUID | None = None,
    first_response_ms: int | None = None,
    message_id: str | None = None,
    text: str = "hi",
) -> MessageRecorded:
    """A `message_recorded` fact as the assigner writes it."""
    return MessageRecorded(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=MessageRecordedPayload(
            message_id=message_id or f"m-{uuid.uuid4().hex[:12]}",
            sender=sender,
            operator_id=operator_id,
            text=text,
            recorded_at=at,
            assignment_id=assignment_id,
            first_response_ms=first_response_ms,
        ),
    )


def chat_assigned(
    chat_id: str,
    operator_id: str,
    at: datetime,
    assignment_id: uuid.UUID,
    via: str = "pull",
    *,
    queue_id: str = DEFAULT_QUEUE,
    first_wait_ms: int | None = None,
    sla_met: bool | None = None,
    idle_timeout_s: int | None = None,
) -> ChatAssigned:
    """A `chat_assigned` fact: an assignment started (a first one carries its wait and whether it met the SLA)."""
    return ChatAssigned(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatAssignedPayload(
            assignment_id=assignment_id,
            operator_id=operator_id,
            assigned_at=at,
            via=via,
            queue_id=queue_id,
            first_wait_ms=first_wait_ms,
            sla_met=sla_met,
            idle_timeout_s=idle_timeout_s,
        ),
    )


def chat_queued(chat_id: str, at: datetime, *, queue_id: str = DEFAULT_QUEUE, reason: str = "new") -> ChatQueued:
    """A `chat_queued` fact: the chat entered a queue."""
    return ChatQueued(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatQueuedPayload(reason=reason, waiting_since=at, queued_at=at, queue_id=queue_id),
    )


def chat_answered(chat_id: str, operator_id: str, at: datetime, *, queue_id: str = DEFAULT_QUEUE) -> ChatAnswered:
    """A `chat_answered` fact: an operator answered the chat."""
    return ChatAnswered(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatAnsweredPayload(operator_id=operator_id, answered_at=at, queue_id=queue_id),
    )


def chat_completed(chat_id: str, at: datetime, *, queue_id: str = DEFAULT_QUEUE, by: str = "admin") -> ChatCompleted:
    """A `chat_completed` fact."""
    return ChatCompleted(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatCompletedPayload(completed_by=by, completed_at=at, queue_id=queue_id),
    )


def assignment_ended(
    chat_id: str,
    operator_id: str,
    assignment_id: uuid.UUID,
    outcome: str,
    started_at: datetime,
    ended_at: datetime,
    *,
    queue_id: str = DEFAULT_QUEUE,
) -> AssignmentEnded:
    """An `assignment_ended` fact with its outcome."""
    return AssignmentEnded(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=ended_at,
        producer="assigner",
        payload=AssignmentEndedPayload(
            assignment_id=assignment_id,
            operator_id=operator_id,
            outcome=outcome,
            started_at=started_at,
            ended_at=ended_at,
            queue_id=queue_id,
        ),
    )


@dataclass
class _Assignment:
    assignment_id: uuid.UUID
    chat_id: str
    operator_id: str
    via: str
    started_at: datetime
    first_response_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    queue_id: str = DEFAULT_QUEUE


SLA_S = 60


@dataclass
class Ledger:
    """The assigner's records and facts for a scripted or random run.

    With `queues` set, chats live in queues (`queue_of`, else `default`) and the ledger also writes
    the per-queue facts: chat_queued, first waits and SLA on chat_assigned, chat_answered, chat_completed.
    """

    facts: list = field(default_factory=list)
    messages: list[tuple] = field(default_factory=list)
    assignments: dict[uuid.UUID, _Assignment] = field(default_factory=dict)
    active: dict[str, uuid.UUID] = field(default_factory=dict)
    chats: dict[str, datetime] = field(default_factory=dict)
    queues: bool = False
    queue_of: dict[str, str] = field(default_factory=dict)
    waiting_first: dict[str, datetime] = field(default_factory=dict)  # chat -> queued, no assignment yet

    def user(self, chat_id: str, at: datetime) -> None:
        """The chat's user wrote (with queues: a chat nobody holds or awaits enters its queue)."""
        self.chats.setdefault(chat_id, at)
        fact = message_recorded(chat_id, "user", at)
        self.messages.append((chat_id, fact.payload.message_id, "user", None, at, None, fact.event_id))
        self.facts.append(fact)
        if self.queues and chat_id not in self.active and chat_id not in self.waiting_first:
            self.waiting_first[chat_id] = at
            self.facts.append(chat_queued(chat_id, at, queue_id=self.queue(chat_id)))

    def queue(self, chat_id: str) -> str:
        """The queue the chat waits in."""
        return self.queue_of.get(chat_id, DEFAULT_QUEUE)

    def assign(self, chat_id: str, operator_id: str, at: datetime, via: str = "pull") -> None:
        """An operator took the chat (a reassign ends the current assignment first)."""
        self.chats.setdefault(chat_id, at)
        if chat_id in self.active:
            self.end(chat_id, "reassigned", at)
        a = _Assignment(uuid.uuid4(), chat_id, operator_id, via, at, queue_id=self.queue(chat_id))
        self.assignments[a.assignment_id] = a
        self.active[chat_id] = a.assignment_id
        wait_ms = None
        if self.queues and chat_id in self.waiting_first:
            wait_ms = (at - self.waiting_first.pop(chat_id)) // timedelta(milliseconds=1)
        self.facts.append(
            chat_assigned(
                chat_id,
                operator_id,
                at,
                a.assignment_id,
                via,
                queue_id=a.queue_id,
                first_wait_ms=wait_ms,
                sla_met=None if wait_ms is None else wait_ms <= SLA_S * 1000,
            )
        )

    def operator(self, chat_id: str, operator_id: str, at: datetime) -> None:
        """An operator wrote; if it held the chat, that is the first response and the assignment is answered."""
        self.chats.setdefault(chat_id, at)
        held = self.assignments.get(self.active.get(chat_id)) if chat_id in self.active else None
        mine = held if held is not None and held.operator_id == operator_id else None
        first_ms = None
        if mine is not None and mine.first_response_at is None:
            mine.first_response_at = at
            first_ms = (at - mine.started_at) // timedelta(milliseconds=1)
        fact = message_recorded(
            chat_id,
            "operator",
            at,
            operator_id=operator_id,
            assignment_id=mine.assignment_id if mine else None,
            first_response_ms=first_ms,
        )
        self.messages.append(
            (
                chat_id,
                fact.payload.message_id,
                "operator",
                operator_id,
                at,
                mine.assignment_id if mine else None,
                fact.event_id,
            )
        )
        self.facts.append(fact)
        if self.queues and (mine is not None or chat_id not in self.active):
            self.facts.append(chat_answered(chat_id, operator_id, at, queue_id=self.queue(chat_id)))
        if mine is not None:
            self.end(chat_id, "answered", at)

    def end(self, chat_id: str, outcome: str, at: datetime) -> None:
        """The chat's active assignment ended with `outcome`."""
        a = self.assignments[self.active.pop(chat_id)]
        a.ended_at, a.outcome = at, outcome
        self.facts.append(
            assignment_ended(chat_id, a.operator_id, a.assignment_id, outcome, a.started_at, at, queue_id=a.queue_id)
        )
        if self.queues and outcome == "completed":
            self.facts.append(chat_completed(chat_id, at, queue_id=a.queue_id))

    async def write(self, conn) -> None:
        """Store the rows the assigner would hold after these facts (each assignment with its queue)."""
        await conn.executemany(
            "INSERT INTO assigner.chats (chat_id, state, assigned_operator_id, assignment_id, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $5)",
            [
                (
                    chat,
                    "assigned" if chat in self.active else "waiting_real_user_reply",
                    self.assignments[self.active[chat]].operator_id if chat in self.active else None,
                    self.active.get(chat),
                    at,
                )
                for chat, at in self.chats.items()
            ],
        )
        await conn.executemany(
            "INSERT INTO assigner.messages (chat_id, message_id, seq, sender, operator_id, text, recorded_at,"
            " assignment_id, event_id) VALUES ($1, $2, $3, $4, $5, 'x', $6, $7, $8)",
            [(m[0], m[1], i, m[2], m[3], m[4], m[5], m[6]) for i, m in enumerate(self.messages)],
        )
        await conn.executemany(
            "INSERT INTO assigner.assignments (assignment_id, chat_id, operator_id, via, started_at,"
            " first_response_at, ended_at, outcome, queue_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                (
                    a.assignment_id,
                    a.chat_id,
                    a.operator_id,
                    a.via,
                    a.started_at,
                    a.first_response_at,
                    a.ended_at,
                    a.outcome,
                    a.queue_id,
                )
                for a in self.assignments.values()
            ],
        )


def random_run(
    ledger: Ledger,
    *,
    events: int,
    operators: int,
    chats: int,
    start: datetime,
    seed: int,
    queues: tuple[str, ...] = (),
) -> None:
    """Append at least `events` facts of random but legal chat activity spread over several UTC days.

    With `queues`, the ledger writes per-queue facts and each chat lives in one of them.
    """
    rng = random.Random(seed)
    ops = [f"op-{i}" for i in range(operators)]
    names = [f"chat-{seed}-{i}" for i in range(chats)]
    if queues:
        ledger.queues = True
        pick = random.Random(seed + 1)  # its own generator: the activity stays that of the seed
        ledger.queue_of.update({c: pick.choice(queues) for c in names})
    clock = {c: start + timedelta(seconds=rng.uniform(0, 3600)) for c in names}
    while len(ledger.facts) < events:
        chat = rng.choice(names)
        # Microsecond steps, so first-response milliseconds must be floored the same way everywhere.
        clock[chat] += timedelta(microseconds=rng.randint(1, 4 * 3600 * 10**6))
        at = clock[chat]
        roll = rng.random()
        if chat not in ledger.active:
            if roll < 0.45:
                ledger.user(chat, at)
            elif roll < 0.85:
                ledger.assign(chat, rng.choice(ops), at)
            else:
                ledger.operator(chat, rng.choice(ops), at)
        else:
            holder = ledger.assignments[ledger.active[chat]].operator_id
            if roll < 0.25:
                ledger.user(chat, at)
            elif roll < 0.6:
                ledger.operator(chat, holder, at)
            elif roll < 0.7:
                ledger.operator(chat, rng.choice(ops), at)
            elif roll < 0.8:
                ledger.end(chat, "released", at)
            elif roll < 0.88:
                ledger.end(chat, "timed_out", at)
            elif roll < 0.95:
                ledger.assign(chat, rng.choice(ops), at, via="reassign")
            else:
                ledger.end(chat, "completed", at)


async def publish(env, ledger: Ledger) -> None:
    """Write the ledger's assigner rows into the test database, then its facts to chat.lifecycle."""
    conn = await env.connect()
    try:
        await ledger.write(conn)
    finally:
        await conn.close()
    producer = make_producer(env.settings)
    await producer.start()
    try:
        # Fire them all, then wait: an idempotent producer keeps each partition's (each chat's) order.
        sends = [
            await producer.send(env.settings.topic(TOPIC_LIFECYCLE), value=encode(f), key=f.chat_id.encode())
            for f in ledger.facts
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
