"""Postgres side of the assigner: load and lock chats, save a transaction's changes, read views.

Only loads and saves, each a named query of `sql/queries.sql`, inside the connection (and
transaction) its caller gives. No decisions: the use cases (usecases.py) decide with the domain.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import asyncpg

from services.assigner.allocation import Held
from services.assigner.domain import AssignmentRecord, Chat, Decision, Fact
from services.assigner.routing import Lane, LaneClaim, Profile, Queue
from shared import events
from shared.db import Queries, from_row

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
MESSAGES_SHOWN = 500
PRODUCER = "assigner"  # the envelope's `producer` of every fact the assigner records


def chat_from_row(row) -> Chat:
    """A domain Chat from a chats row (the assignment_* columns only where it is joined with its assignment)."""
    return from_row(Chat, row, skills=tuple)


def profile_of(row) -> Profile:
    """A routing Profile from an operators row (or its JSON)."""
    return from_row(Profile, row, queues=tuple, skills=frozenset)


def queue_of(row) -> Queue:
    """A routing Queue from a queues row (or its JSON)."""
    return from_row(Queue, row)


class Changes:
    """What a transaction will write: final chat states and facts in order (with each stored message's
    sequence number, the operator who held the chat then, and the event id it came with)."""

    def __init__(self):
        self.chats: dict[str, Chat] = {}
        self.facts: list[tuple[str, Fact, datetime]] = []
        self.message_seq: list[int] = []
        self.handled_by: list[str | None] = []
        self.message_event_ids: list[uuid.UUID] = []

    def add(
        self, chat_id: str, before: Chat | None, decision: Decision, at: datetime, event_id: uuid.UUID | None = None
    ) -> None:
        """Record one decision's result."""
        if decision.chat is not None:
            self.chats[chat_id] = decision.chat
        for fact in decision.facts:
            self.facts.append((chat_id, fact, at))
            if fact.type == "message_recorded":
                self.message_seq.append(decision.chat.message_count)
                self.handled_by.append(before.assigned_operator_id if before else None)
                self.message_event_ids.append(event_id or events.new_event_id())

    def ended_assignments(self) -> set[uuid.UUID]:
        """Assignments these changes end."""
        return {f.payload.assignment_id for _, f, _ in self.facts if f.type == "assignment_ended"}


class Repository:
    """Loads and saves of the assigner's tables; every method runs in the connection it is given."""

    def __init__(self, queries: Queries = QUERIES):
        self.q = queries

    # ---- chats ---------------------------------------------------------------------------

    async def lock_chats(self, conn: asyncpg.Connection, chat_ids: Iterable[str]) -> dict[str, Chat]:
        """Lock and load chats by id, in chat_id order (missing ones are absent from the result)."""
        rows = await conn.fetch(self.q.lock_chats, sorted(set(chat_ids)))
        return {r["chat_id"]: chat_from_row(r) for r in await self._fresh(conn, rows)}

    async def lock_chats_with_known(
        self, conn: asyncpg.Connection, chat_ids: Iterable[str], messages: Iterable[tuple[str, str]]
    ) -> tuple[dict[str, Chat], set[tuple[str, str]]]:
        """Lock and load chats, with those of the (chat_id, message_id) pairs in `messages` they already store."""
        pairs = sorted(set(messages))
        rows = await conn.fetch(
            self.q.lock_chats_with_known, sorted(set(chat_ids)), [c for c, _ in pairs], [m for _, m in pairs]
        )
        chats = {r["chat_id"]: chat_from_row(r) for r in await self._fresh(conn, rows)}
        return chats, {(r["chat_id"], m) for r in rows for m in r["known_message_ids"]}

    async def _fresh(self, conn: asyncpg.Connection, rows: list) -> list:
        """Locked rows, those whose joined assignment is stale re-read under the lock now held.

        A chat updated by a transaction this one waited for comes back at its newest version, but
        joined with the assignment its own snapshot saw (none, or the previous one): deciding on that
        would end an assignment with no start time (a 500) or miss a first response.
        """
        stale = [r["chat_id"] for r in rows if r["assignment_stale"]]
        if not stale:
            return rows
        reread = {r["chat_id"]: r for r in await conn.fetch(self.q.read_chats, stale)}
        return [reread.get(r["chat_id"], r) if r["assignment_stale"] else r for r in rows]

    async def lock_chats_of_assignments(
        self, conn: asyncpg.Connection, assignment_ids: Iterable[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, AssignmentRecord], dict[str, Chat]]:
        """Assignment records by id (absent ids are absent) and their chats, locked in chat_id order."""
        rows = await conn.fetch(self.q.lock_chats_of_assignments, list(set(assignment_ids)))
        records = {
            a: AssignmentRecord(a, r["chat_id"], op, ended, outcome)
            for r in rows
            for a, op, ended, outcome in zip(
                r["requested_ids"], r["requested_operators"], r["requested_ended"], r["requested_outcomes"]
            )
        }
        return records, {r["chat_id"]: chat_from_row(r) for r in await self._fresh(conn, rows)}

    async def claim_waiting(self, conn: asyncpg.Connection, limit: int) -> list[Chat]:
        """Lock the `limit` oldest waiting chats nobody else holds (SKIP LOCKED)."""
        return [chat_from_row(r) for r in await conn.fetch(self.q.claim_waiting_chats, limit)]

    async def claim_next(
        self, conn: asyncpg.Connection, operator_id: str, cooled_before: datetime, given: list[str]
    ) -> Chat | None:
        """Lock the oldest waiting chat `operator_id` may take (not theirs last unless queued by
        `cooled_before`), past the chats in `given` (SKIP LOCKED)."""
        row = await conn.fetchrow(self.q.claim_next_chat, operator_id, cooled_before, given)
        return chat_from_row(row) if row is not None else None

    # ---- routing ---------------------------------------------------------------------------

    async def routing_context(
        self, conn: asyncpg.Connection, operator_ids: list[str]
    ) -> tuple[dict[str, Profile], dict[str, Queue], bool, dict[str, list[Held]]]:
        """The pullers' profiles (those that have one), the queues they reach, whether any waiting chat is
        routed, and each puller's active assignments, oldest first."""
        row = await conn.fetchrow(self.q.routing_context, operator_ids)
        profiles = {o["operator_id"]: profile_of(o) for o in json.loads(row["operators"])}
        queues = {q["queue_id"]: queue_of(q) for q in json.loads(row["queues"])}
        held: dict[str, list[Held]] = {op: [] for op in operator_ids}
        if row["held_ids"] is not None:
            for op, a, chat_id, started in zip(
                row["held_operators"], row["held_ids"], row["held_chats"], row["held_started"]
            ):
                held[op].append(Held(a, chat_id, started))
        return profiles, queues, row["routed_waiting"], held

    async def waiting_lanes(self, conn: asyncpg.Connection, queue_ids: list[str]) -> list[Lane]:
        """The (queue, skill set) pairs of waiting chats in these queues, each with its lowest rank."""
        rows = await conn.fetch(self.q.waiting_lanes, queue_ids)
        return [Lane(r["queue_id"], tuple(r["skills"]), r["head"]) for r in rows]

    async def claim_lanes(
        self,
        conn: asyncpg.Connection,
        claims: list[LaneClaim],
        operator_id: str | None = None,
        cooled_before: list[datetime] | None = None,
        given: list[str] | None = None,
    ) -> list[Chat]:
        """Lock each lane's lowest-ranked waiting chats nobody else holds (SKIP LOCKED), one probe per lane."""
        if not claims:
            return []
        rows = await conn.fetch(
            self.q.claim_lanes,
            [c.lane.queue_id for c in claims],
            [",".join(c.lane.skills) for c in claims],
            [c.limit for c in claims],
            [c.relaxed_before for c in claims],
            operator_id,
            cooled_before if cooled_before is not None else [None] * len(claims),
            given or [],
        )
        return [chat_from_row(r) for r in rows]

    async def queue(self, conn: asyncpg.Connection, queue_id: str) -> Queue | None:
        """One queue's settings (None: it does not exist)."""
        row = await conn.fetchrow(self.q.queue_by_id, queue_id)
        return queue_of(row) if row is not None else None

    async def known_queues(self, conn: asyncpg.Connection, queue_ids: Iterable[str]) -> set[str]:
        """Which of these queues exist (key-share locked until commit: a delete waits)."""
        return {r["queue_id"] for r in await conn.fetch(self.q.queue_exists, sorted(set(queue_ids)))}

    # ---- assignments and operators -------------------------------------------------------

    async def lock_operator(self, conn: asyncpg.Connection, operator_id: str) -> None:
        """Serialise an operator's pulls and reassignments to it until commit."""
        await conn.execute(self.q.lock_operator, operator_id)

    async def lock_operators(self, conn: asyncpg.Connection, operator_ids: list[str]) -> None:
        """lock_operator for several operators, in sorted order (no deadlock)."""
        await conn.execute(self.q.lock_operators, sorted(operator_ids))

    async def held_by_one(self, conn: asyncpg.Connection, operator_id: str) -> list[Held]:
        """One operator's active assignments, oldest first."""
        rows = await conn.fetch(self.q.active_assignments_of, operator_id)
        return [Held(r["assignment_id"], r["chat_id"], r["started_at"]) for r in rows]

    # ---- saving ----------------------------------------------------------------------------

    async def persist(self, conn: asyncpg.Connection, changes: Changes, now: datetime) -> None:
        """Write chats, assignments, messages and outbox rows of a transaction, set-based.

        At most two statements: first responses and ends (updates of existing assignments, one row
        each), then every insert in one (`write_changes`). `now` stamps the chats written.
        """
        updates: dict[uuid.UUID, list] = {}  # assignment -> [first response, end, outcome]
        starts, start_queues, msgs = [], [], []
        for chat_id, fact, _at in changes.facts:
            p = fact.payload
            if fact.type == "message_recorded":
                msgs.append((chat_id, p))
                if p.first_response_ms is not None:
                    update = updates.setdefault(p.assignment_id, [None, None, None])
                    update[0] = update[0] or p.recorded_at
            elif fact.type == "assignment_ended":
                update = updates.setdefault(p.assignment_id, [None, None, None])
                if update[1] is None:
                    update[1:] = [p.ended_at, p.outcome]
            elif fact.type == "chat_assigned":
                starts.append((p.assignment_id, chat_id, p.operator_id, p.via, p.assigned_at))
                start_queues.append(p.queue_id)
        if updates:
            await conn.execute(self.q.update_assignments, list(updates), *map(list, zip(*updates.values())))
        if not (changes.chats or starts or msgs or changes.facts):
            return
        cs = list(changes.chats.values())
        fact_ids = [events.new_event_id() for _ in changes.facts]
        await conn.execute(
            self.q.write_changes,
            [c.chat_id for c in cs],
            [c.state for c in cs],
            [c.assigned_operator_id for c in cs],
            [c.last_operator_id for c in cs],
            [c.assignment_id for c in cs],
            [c.waiting_since for c in cs],
            [c.queued_at for c in cs],
            [c.operator_replied_at for c in cs],
            [c.last_user_message_at for c in cs],
            [c.message_count for c in cs],
            [c.created_at or now for c in cs],
            [now] * len(cs),
            *(map(list, zip(*starts)) if starts else ([], [], [], [], [])),
            [c for c, _ in msgs],
            [p.message_id for _, p in msgs],
            changes.message_seq,
            [p.sender for _, p in msgs],
            [p.operator_id for _, p in msgs],
            [p.text for _, p in msgs],
            [p.sent_at for _, p in msgs],
            [p.recorded_at for _, p in msgs],
            [p.assignment_id for _, p in msgs],
            changes.handled_by,
            changes.message_event_ids,
            [chat_id for chat_id, _, _ in changes.facts],
            fact_ids,
            [fact.type for _, fact, _ in changes.facts],
            [
                events.encode_fact(event_id, chat_id, at, PRODUCER, fact.type, fact.payload)
                for event_id, (chat_id, fact, at) in zip(fact_ids, changes.facts, strict=True)
            ],
            [c.queue_id for c in cs],
            [c.priority for c in cs],
            [",".join(c.skills) for c in cs],
            [c.opened_at for c in cs],
            [c.first_assigned_at for c in cs],
            start_queues,
        )

    async def erase_texts(self, conn: asyncpg.Connection, chat_id: str) -> int:
        """Blank a locked chat's message texts and its unpublished facts' texts; returns messages blanked.

        The relay is kept out until commit while the outbox rows are rewritten, so no text the erase
        saw leaves for Kafka afterwards.
        """
        erased = await conn.fetchval(self.q.erase_chat_texts, chat_id)
        await conn.execute(self.q.lock_outbox_relay)
        await conn.execute(self.q.erase_outbox_texts, chat_id)
        return erased

    # ---- views -----------------------------------------------------------------------------

    async def views(self, conn: asyncpg.Connection, chat_ids: list[str]) -> dict[str, dict]:
        """API views of several chats, messages included (one statement, in `conn`'s transaction).

        Times inside `messages` are ISO strings; the API's response model reads them as datetimes.
        """
        rows = await conn.fetch(self.q.chat_views, chat_ids, MESSAGES_SHOWN)
        return {
            r["chat_id"]: {
                "chat_id": r["chat_id"],
                "state": r["state"],
                "assigned_operator_id": r["assigned_operator_id"],
                "last_operator_id": r["last_operator_id"],
                "waiting_since": r["waiting_since"],
                "message_count": r["message_count"],
                "queue_id": r["queue_id"],
                "priority": r["priority"],
                "skills": list(r["skills"]),
                "queue_idle_timeout_s": r["queue_idle_timeout_s"],  # not shown: the idle deadline's
                "messages": json.loads(r["messages"]),
            }
            for r in rows
        }

    async def queue_counts(self, conn: asyncpg.Connection) -> tuple[dict[str, int], datetime | None, list]:
        """Chats per state, when the oldest waiting chat was queued, active assignments per operator."""
        counts = {r["state"]: r["n"] for r in await conn.fetch(self.q.count_by_state)}
        oldest = await conn.fetchval(self.q.oldest_waiting)
        holders = await conn.fetch(self.q.active_by_operator)
        return counts, oldest, [(r["operator_id"], r["n"]) for r in holders]

    async def stuck_page(
        self, conn: asyncpg.Connection, cutoff: datetime, limit: int, after: tuple[datetime, str] | None
    ) -> list[dict]:
        """Up to `limit` chats waiting or assigned since before `cutoff`, oldest first, after the keyset."""
        since, chat_id = after if after is not None else (None, None)
        return [dict(r) for r in await conn.fetch(self.q.stuck_chats_page, cutoff, limit, since, chat_id)]

    async def routing_gauges(self, conn: asyncpg.Connection) -> tuple[list, dict[str, int]]:
        """Per queue (queue_id, waiting chats, oldest waiting_since); operators per status."""
        queues = [(r["queue_id"], r["waiting"], r["oldest"]) for r in await conn.fetch(self.q.queue_gauges)]
        statuses = {r["status"]: r["n"] for r in await conn.fetch(self.q.operators_by_status)}
        return queues, statuses

    async def outbox_backlog(self, conn: asyncpg.Connection) -> int:
        """Facts not yet published."""
        return await conn.fetchval(self.q.outbox_backlog)
