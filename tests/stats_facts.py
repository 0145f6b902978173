"""Lifecycle facts for stats tests, and a ledger that writes the assigner rows those facts describe.

The ledger plays the assigner's part without its code: every action appends the facts the
assigner would publish on chat.lifecycle and keeps the rows it would store, so a test can check
stats against a recount of exactly those rows (`switchboard reconcile`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.events import (
    AssignmentEnded,
    AssignmentEndedPayload,
    ChatAssigned,
    ChatAssignedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    new_event_id,
)


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
    chat_id: str, operator_id: str, at: datetime, assignment_id: uuid.UUID, via: str = "pull"
) -> ChatAssigned:
    """A `chat_assigned` fact: an assignment started."""
    return ChatAssigned(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="assigner",
        payload=ChatAssignedPayload(assignment_id=assignment_id, operator_id=operator_id, assigned_at=at, via=via),
    )


def assignment_ended(
    chat_id: str, operator_id: str, assignment_id: uuid.UUID, outcome: str, started_at: datetime, ended_at: datetime
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


@dataclass
class Ledger:
    """The assigner's records and facts for a scripted or random run."""

    facts: list = field(default_factory=list)
    messages: list[tuple] = field(default_factory=list)
    assignments: dict[uuid.UUID, _Assignment] = field(default_factory=dict)
    active: dict[str, uuid.UUID] = field(default_factory=dict)
    chats: dict[str, datetime] = field(default_factory=dict)

    def user(self, chat_id: str, at: datetime) -> None:
        """The chat's user wrote."""
        self.chats.setdefault(chat_id, at)
        fact = message_recorded(chat_id, "user", at)
        self.messages.append((chat_id, fact.payload.message_id, "user", None, at, None, fact.event_id))
        self.facts.append(fact)

    def assign(self, chat_id: str, operator_id: str, at: datetime, via: str = "pull") -> None:
        """An operator took the chat (a reassign ends the current assignment first)."""
        self.chats.setdefault(chat_id, at)
        if chat_id in self.active:
            self.end(chat_id, "reassigned", at)
        a = _Assignment(uuid.uuid4(), chat_id, operator_id, via, at)
        self.assignments[a.assignment_id] = a
        self.active[chat_id] = a.assignment_id
        self.facts.append(chat_assigned(chat_id, operator_id, at, a.assignment_id, via))

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
        if mine is not None:
            self.end(chat_id, "answered", at)

    def end(self, chat_id: str, outcome: str, at: datetime) -> None:
        """The chat's active assignment ended with `outcome`."""
        a = self.assignments[self.active.pop(chat_id)]
        a.ended_at, a.outcome = at, outcome
        self.facts.append(assignment_ended(chat_id, a.operator_id, a.assignment_id, outcome, a.started_at, at))

    async def write(self, conn) -> None:
        """Store the rows the assigner would hold after these facts."""
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
            " first_response_at, ended_at, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
                )
                for a in self.assignments.values()
            ],
        )


def random_run(ledger: Ledger, *, events: int, operators: int, chats: int, start: datetime, seed: int) -> None:
    """Append at least `events` facts of random but legal chat activity spread over several UTC days."""
    rng = random.Random(seed)
    ops = [f"op-{i}" for i in range(operators)]
    names = [f"chat-{seed}-{i}" for i in range(chats)]
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
