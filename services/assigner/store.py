"""Postgres side of the assigner: load and lock chats, run the domain, persist state and facts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Literal

import asyncpg

from services.assigner import domain, metrics
from services.assigner.domain import Chat, Decision, Fact
from shared import events
from shared.db import Queries
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

QUERIES = Queries(Path(__file__).parent / "sql" / "queries.sql")
MESSAGES_SHOWN = 500
CLAIM_SLACK = 4  # extra candidates a batch of pulls locks, for pullers who may not take the oldest
TEXT_PURGE_DIVISOR = 50  # a purge batch takes retention_batch_size / 50 chats (each with all its messages)

FACT_MODELS = {
    "message_recorded": events.MessageRecorded,
    "chat_queued": events.ChatQueued,
    "chat_assigned": events.ChatAssigned,
    "assignment_ended": events.AssignmentEnded,
    "chat_answered": events.ChatAnswered,
    "chat_completed": events.ChatCompleted,
    "chat_reopened": events.ChatReopened,
}


class UnknownChat(domain.DomainError):
    status = 404
    code = "chat_not_found"


class UnknownAssignment(domain.DomainError):
    status = 404
    code = "assignment_not_found"


class OperatorAtCapacity(domain.DomainError):
    status = 409
    code = "operator_at_capacity"


class InvalidCommand(domain.DomainError):
    """A command whose own data the event contract or the database refuses (only its caller hears of it)."""

    status = 422
    code = "invalid_command"


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's pull, release or completion, applied in a batch with others."""

    kind: Literal["pull", "release", "complete"]
    operator_id: str
    assignment_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Pulled:
    """The outcome of a pull: the assignment given (or kept), or nothing."""

    assignment_id: uuid.UUID | None
    chat_id: str | None
    assigned_at: datetime | None
    new: bool


def chat_from_row(row) -> Chat:
    """A domain Chat from a chats row (optionally joined with its assignment)."""
    keys = row.keys()
    return Chat(
        chat_id=row["chat_id"], state=row["state"], assigned_operator_id=row["assigned_operator_id"],
        last_operator_id=row["last_operator_id"], assignment_id=row["assignment_id"],
        waiting_since=row["waiting_since"], queued_at=row["queued_at"],
        operator_replied_at=row["operator_replied_at"], last_user_message_at=row["last_user_message_at"],
        message_count=row["message_count"], created_at=row["created_at"],
        assignment_started_at=row["assignment_started_at"] if "assignment_started_at" in keys else None,
        assignment_responded=bool(row["assignment_responded"]) if "assignment_responded" in keys else False,
    )


class Changes:
    """What a transaction will write: final chat states and facts in order."""

    def __init__(self):
        self.chats: dict[str, Chat] = {}
        self.facts: list[tuple[str, Fact, datetime]] = []
        self.message_seq: list[int] = []
        self.handled_by: list[str | None] = []
        self.message_event_ids: list[uuid.UUID] = []

    def add(self, chat_id: str, before: Chat | None, decision: Decision, at: datetime,
            event_id: uuid.UUID | None = None) -> None:
        """Record one decision's result."""
        if decision.chat is not None:
            self.chats[chat_id] = decision.chat
        for fact in decision.facts:
            self.facts.append((chat_id, fact, at))
            if fact.type == "message_recorded":
                self.message_seq.append(decision.chat.message_count)
                self.handled_by.append(before.assigned_operator_id if before else None)
                self.message_event_ids.append(event_id or uuid.uuid4())


def _envelope(chat_id: str, fact: Fact, at: datetime):
    model = FACT_MODELS[fact.type]
    return model(event_id=uuid.uuid4(), chat_id=chat_id, occurred_at=at, producer="assigner", payload=fact.payload)


class Store:
    """The assigner's use cases, each one Postgres transaction."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings):
        self.pool = pool
        self.settings = settings
        self.q = QUERIES

    # ---- shared persistence -------------------------------------------------------------

    async def lock_chats(self, conn: asyncpg.Connection, chat_ids: Iterable[str]) -> dict[str, Chat]:
        """Lock and load chats by id (missing ones are absent from the result)."""
        rows = await conn.fetch(self.q.lock_chats, sorted(set(chat_ids)))
        return {r["chat_id"]: chat_from_row(r) for r in await self._fresh(conn, rows)}

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

    async def persist(self, conn: asyncpg.Connection, changes: Changes) -> None:
        """Write chats, assignments, messages and outbox rows of a transaction, set-based.

        At most three statements: first responses and ends (updates of existing assignments),
        then every insert in one (`write_changes`).
        """
        firsts, ends, starts, msgs = [], [], [], []
        for chat_id, fact, _at in changes.facts:
            p = fact.payload
            if fact.type == "message_recorded":
                msgs.append((chat_id, p))
                if p.first_response_ms is not None:
                    firsts.append((p.assignment_id, p.recorded_at))
            elif fact.type == "assignment_ended":
                ends.append((p.assignment_id, p.ended_at, p.outcome))
            elif fact.type == "chat_assigned":
                starts.append((p.assignment_id, chat_id, p.operator_id, p.via, p.assigned_at))
        if firsts:
            await conn.execute(self.q.mark_first_responses, *map(list, zip(*firsts)))
        if ends:
            await conn.execute(self.q.end_assignments, *map(list, zip(*ends)))
        if not (changes.chats or starts or msgs or changes.facts):
            return
        cs = list(changes.chats.values())
        now = events.utcnow()
        envs = [_envelope(chat_id, fact, at) for chat_id, fact, at in changes.facts]
        await conn.execute(
            self.q.write_changes,
            [c.chat_id for c in cs], [c.state for c in cs], [c.assigned_operator_id for c in cs],
            [c.last_operator_id for c in cs], [c.assignment_id for c in cs], [c.waiting_since for c in cs],
            [c.queued_at for c in cs], [c.operator_replied_at for c in cs],
            [c.last_user_message_at for c in cs], [c.message_count for c in cs],
            [c.created_at or now for c in cs], [now] * len(cs),
            *(map(list, zip(*starts)) if starts else ([], [], [], [], [])),
            [c for c, _ in msgs], [p.message_id for _, p in msgs], changes.message_seq,
            [p.sender for _, p in msgs], [p.operator_id for _, p in msgs], [p.text for _, p in msgs],
            [p.sent_at for _, p in msgs], [p.recorded_at for _, p in msgs],
            [p.assignment_id for _, p in msgs], changes.handled_by, changes.message_event_ids,
            [e.chat_id for e in envs], [e.event_id for e in envs], [e.type for e in envs],
            [e.model_dump_json() for e in envs],
        )

    @staticmethod
    def count_outcomes(changes: Changes) -> None:
        """Bump assignment counters once the transaction committed."""
        for _chat_id, fact, _at in changes.facts:
            if fact.type == "chat_assigned":
                metrics.ASSIGNMENTS_STARTED.labels(fact.payload.via).inc()
            elif fact.type == "assignment_ended":
                metrics.ASSIGNMENTS_ENDED.labels(fact.payload.outcome).inc()

    # ---- consumer use case --------------------------------------------------------------

    async def apply_events(self, conn: asyncpg.Connection, items: list[events.Envelope]) -> Changes:
        """Apply inbound messages and timeouts of one partition batch, in order, inside `conn`'s transaction."""
        message_ids = sorted({e.payload.message_id for e in items if e.type in ("user_message", "operator_message")})
        rows = await conn.fetch(self.q.lock_chats_with_known, sorted({e.chat_id for e in items}), message_ids)
        chats = {r["chat_id"]: chat_from_row(r) for r in await self._fresh(conn, rows)}
        known = {(r["chat_id"], m) for r in rows for m in r["known_message_ids"]}
        changes = Changes()
        for event in items:
            at = events.utcnow()
            cmd = _command_of(event, at)
            if isinstance(cmd, (domain.ReceiveUserMessage, domain.ReceiveOperatorMessage)):
                key = (event.chat_id, cmd.message_id)
                if key in known:
                    continue  # the same message under another event id: applied once only
                known.add(key)
            before = chats.get(event.chat_id)
            decision = domain.decide(before, cmd, event.chat_id)
            if decision.chat is not None:
                chats[event.chat_id] = decision.chat
            changes.add(event.chat_id, before, decision, at, event.event_id)
        await self.persist(conn, changes)
        return changes

    # ---- operator and admin use cases ---------------------------------------------------

    async def operator_batch(self, commands: list["OperatorCommand"]) -> tuple[list[object], Changes]:
        """Apply operators' pulls, releases and completions together, in one transaction.

        Returns one result per command, in order (a `Pulled` with its chat view for a pull, the chat
        id for a release or completion, or the DomainError that refused it) and the changes, whose
        outcomes the caller counts once committed. Lock order: chats of released/completed
        assignments (sorted, may wait), then the pullers' advisory locks (sorted, may wait), then
        waiting chats with SKIP LOCKED (never waits): no cycle with the consumer or another batch.
        """
        results: list[object] = [None] * len(commands)
        changes = Changes()
        async with self.pool.acquire() as conn, conn.transaction():
            chats: dict[str, Chat] = {}
            enders = [i for i, c in enumerate(commands) if c.kind != "pull"]
            if enders:
                rows = await conn.fetch(self.q.assignments_by_ids, list({commands[i].assignment_id for i in enders}))
                records = {r["assignment_id"]: r for r in rows}
                chats = await self.lock_chats(conn, {r["chat_id"] for r in rows})
                now = events.utcnow()  # read under the locks: times follow commit order
                for i in enders:
                    try:
                        chat, cmd = self._ending(commands[i], records.get(commands[i].assignment_id), chats, now)
                        decision = domain.decide(chat, cmd)
                    except domain.DomainError as exc:
                        results[i] = exc
                        continue
                    except ValueError as exc:  # pydantic's ValidationError too: this command's data
                        results[i] = InvalidCommand(f"{commands[i].kind} refused: {exc}")
                        continue
                    if decision.chat is not None:
                        chats[chat.chat_id] = decision.chat
                    changes.add(chat.chat_id, chat, decision, now)
                    results[i] = chat.chat_id
            pullers = [i for i, c in enumerate(commands) if c.kind == "pull"]
            if pullers:
                await self._pulls(conn, commands, pullers, results, changes)
            await self.persist(conn, changes)
            shown = [r for r in results if isinstance(r, Pulled) and r.chat_id is not None]
            if shown:
                views = await self._views(conn, sorted({p.chat_id for p in shown}))
                for i, r in enumerate(results):
                    if isinstance(r, Pulled) and r.chat_id is not None:
                        results[i] = (r, views.get(r.chat_id))
            for i, r in enumerate(results):
                if isinstance(r, Pulled):
                    results[i] = (r, None)
        return results, changes

    def _ending(self, command: "OperatorCommand", record, chats: dict[str, Chat], now: datetime):
        """The chat and domain command of a release or completion, or the error that refuses it."""
        if record is None:
            raise UnknownAssignment(f"assignment {command.assignment_id} does not exist")
        if record["operator_id"] != command.operator_id:
            raise domain.NotYourAssignment(f"assignment {command.assignment_id} is not yours")
        if record["ended_at"] is not None:
            raise domain.AssignmentNotActive(f"assignment {command.assignment_id} ended ({record['outcome']})")
        chat = chats[record["chat_id"]]
        if command.kind == "release":
            return chat, domain.ReleaseAssignment(operator_id=command.operator_id,
                                                  assignment_id=command.assignment_id, at=now)
        return chat, domain.CompleteChat(by=f"operator:{command.operator_id}", at=now,
                                         assignment_id=command.assignment_id, operator_id=command.operator_id)

    async def _pulls(self, conn: asyncpg.Connection, commands, pullers: list[int], results: list,
                     changes: Changes) -> None:
        """Pulls of a batch: room is checked under each puller's lock; the oldest chats go first."""
        capacity = self.settings.operator_capacity
        for i in pullers:
            problem = events.operator_id_problem(commands[i].operator_id)
            if problem is not None:  # no event could carry it: refuse this pull alone
                results[i] = InvalidCommand(f"operator id {problem}")
        pullers = [i for i in pullers if results[i] is None]
        if not pullers:
            return
        operators = sorted({commands[i].operator_id for i in pullers})
        await conn.execute(self.q.lock_operators, operators)
        ended = {f.payload.assignment_id for _, f, _ in changes.facts if f.type == "assignment_ended"}
        active: dict[str, list[tuple]] = {op: [] for op in operators}
        for r in await conn.fetch(self.q.active_assignments_of_many, operators):
            if r["assignment_id"] not in ended:
                active[r["operator_id"]].append((r["assignment_id"], r["chat_id"], r["started_at"]))
        # After the read: a new assignment starts after every end this transaction saw (and after
        # the ends of this batch), so the recorded history never shows an operator over capacity.
        now = events.utcnow()
        cooled = now - timedelta(seconds=self.settings.repeat_cooldown_s)
        held = {op: len(a) for op, a in active.items()}
        wanting = []
        for i in pullers:
            op = commands[i].operator_id
            if held[op] < capacity:
                held[op] += 1
                wanting.append(i)
        if wanting:
            limit = len(wanting) + CLAIM_SLACK
            claimed = [chat_from_row(r) for r in await conn.fetch(self.q.claim_waiting_chats, limit)]
            # Chats released in this batch are waiting again (not yet written): they compete too.
            requeued = [c for c in changes.chats.values() if c.state == domain.WAITING]
            candidates = sorted(claimed + requeued, key=lambda c: (c.waiting_since, c.chat_id))
            picks = domain.match_pullers([commands[i].operator_id for i in wanting], candidates, now,
                                         self.settings.repeat_cooldown_s)
            given = [p.chat_id for p in picks if p is not None]
            for i, pick in zip(wanting, picks):
                op = commands[i].operator_id
                if pick is None and len(claimed) == limit:
                    # Every candidate was this operator's own recent chat: look further down the queue.
                    row = await conn.fetchrow(self.q.claim_next_chat, op, cooled, given)
                    pick = chat_from_row(row) if row is not None else None
                    if pick is not None:
                        given.append(pick.chat_id)
                if pick is None:
                    results[i] = Pulled(None, None, None, new=False)
                    continue
                cmd = domain.AssignToPuller(operator_id=op, assignment_id=uuid.uuid4(), at=now)
                try:
                    decision = domain.decide(pick, cmd)
                except (domain.DomainError, ValueError) as exc:  # this pull alone; its chat stays waiting
                    results[i] = exc if isinstance(exc, domain.DomainError) else InvalidCommand(f"pull refused: {exc}")
                    continue
                changes.add(pick.chat_id, pick, decision, now)
                active[op].append((cmd.assignment_id, pick.chat_id, now))
                results[i] = Pulled(cmd.assignment_id, pick.chat_id, now, new=True)
        for i in pullers:
            if results[i] is None:  # at capacity: the oldest active assignment (retry-safe pull)
                mine = active[commands[i].operator_id]
                results[i] = (Pulled(mine[0][0], mine[0][1], mine[0][2], new=False) if mine
                              else Pulled(None, None, None, new=False))

    async def _views(self, conn: asyncpg.Connection, chat_ids: list[str]) -> dict[str, dict]:
        """API views of several chats, messages included, read in `conn`'s transaction (one statement).

        Times inside `messages` are ISO strings; the API's response model reads them as datetimes.
        """
        rows = await conn.fetch(self.q.chat_views, chat_ids, MESSAGES_SHOWN)
        return {r["chat_id"]: {
            "chat_id": r["chat_id"], "state": r["state"], "assigned_operator_id": r["assigned_operator_id"],
            "last_operator_id": r["last_operator_id"], "waiting_since": r["waiting_since"],
            "message_count": r["message_count"], "messages": json.loads(r["messages"]),
        } for r in rows}

    async def current(self, operator_id: str) -> Pulled:
        """The operator's oldest active assignment, if any."""
        async with self.pool.acquire() as conn:
            active = await conn.fetch(self.q.active_assignments_of, operator_id)
        if not active:
            return Pulled(None, None, None, new=False)
        a = active[0]
        return Pulled(a["assignment_id"], a["chat_id"], a["started_at"], new=False)

    async def _command_on_chat(self, chat_id: str, command_at, operator_lock: str | None = None
                               ) -> tuple[Chat, dict]:
        """Apply one admin command to a chat in its own transaction; the chat after it, and its view.

        Locks in the order every transaction takes them: the chat, then (for a reassign) the target
        operator, as a batch locks chats of ended assignments before pullers. `command_at(now)` builds
        the command with the time read under the locks, so times follow commit order.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            chat = (await self.lock_chats(conn, [chat_id])).get(chat_id)
            if chat is None:
                raise UnknownChat(f"chat {chat_id} does not exist")
            if operator_lock is not None:
                await conn.execute(self.q.lock_operator, operator_lock)
            cmd = command_at(events.utcnow())
            if isinstance(cmd, domain.ReassignChat):
                active = await conn.fetch(self.q.active_assignments_of, cmd.operator_id)
                holds_this = any(a["chat_id"] == chat_id for a in active)
                if not holds_this and len(active) >= self.settings.operator_capacity:
                    raise OperatorAtCapacity(
                        f"operator {cmd.operator_id} already holds {len(active)} chat(s), the capacity")
            decision = domain.decide(chat, cmd)
            changes = Changes()
            changes.add(chat_id, chat, decision, cmd.at)
            await self.persist(conn, changes)
            view = (await self._views(conn, [chat_id]))[chat_id]
        self.count_outcomes(changes)
        return decision.chat or chat, view

    async def admin_complete(self, admin: str, chat_id: str) -> dict:
        """An admin completes a chat in any state; returns the chat's view as committed."""
        _, view = await self._command_on_chat(chat_id, lambda now: domain.CompleteChat(by=f"admin:{admin}", at=now))
        return view

    async def reassign(self, chat_id: str, operator_id: str) -> tuple[Pulled, dict]:
        """An admin gives a chat to an operator (who must have room): the assignment it holds now, and the view.

        The assignment is the one this transaction created, or the operator's current one on this
        chat when it already held it: what was done, not a later re-read that may see another
        chat of the same operator.
        """
        assignment_id = uuid.uuid4()
        chat, view = await self._command_on_chat(
            chat_id, lambda now: domain.ReassignChat(operator_id=operator_id, assignment_id=assignment_id, at=now),
            operator_lock=operator_id)
        return Pulled(chat.assignment_id, chat_id, chat.assignment_started_at,
                      new=chat.assignment_id == assignment_id), view

    # ---- reads --------------------------------------------------------------------------

    async def chat_view(self, chat_id: str) -> dict | None:
        """The chat as the API shows it, messages included (None when it does not exist)."""
        async with self.pool.acquire() as conn:
            return (await self._views(conn, [chat_id])).get(chat_id)

    async def queue_summary(self) -> dict:
        """Counts per state, oldest waiting age, active assignments per operator."""
        async with self.pool.acquire() as conn:
            counts = {r["state"]: r["n"] for r in await conn.fetch(self.q.count_by_state)}
            oldest = await conn.fetchval(self.q.oldest_waiting)
            holders = await conn.fetch(self.q.active_by_operator)
        now = events.utcnow()
        return {
            "chats_by_state": {s: counts.get(s, 0) for s in domain.STATES},
            "oldest_waiting_since": oldest,
            "oldest_waiting_age_s": (now - oldest).total_seconds() if oldest else 0.0,
            "active_assignments": sum(r["n"] for r in holders),
            "operators": [{"operator_id": r["operator_id"], "active_assignments": r["n"]} for r in holders],
        }

    async def stuck_chats(self, older_than_s: float, limit: int,
                          after: tuple[datetime, str] | None = None) -> tuple[list[dict], tuple[datetime, str] | None]:
        """One page of chats waiting or assigned for longer than `older_than_s`, oldest first.

        Returns the rows and the sort key to resume after (None on the last page).
        """
        cutoff = events.utcnow() - timedelta(seconds=older_than_s)
        since, chat_id = after if after is not None else (None, None)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.q.stuck_chats_page, cutoff, limit + 1, since, chat_id)
        page = [dict(r) for r in rows[:limit]]
        resume = (page[-1]["since"], page[-1]["chat_id"]) if len(rows) > limit else None
        for row in page:
            del row["since"]
        return page, resume

    # ---- retention ----------------------------------------------------------------------

    async def erase_chat_content(self, chat_id: str) -> int:
        """Remove every stored text of a chat (messages, unpublished facts), keeping every row; returns texts removed.

        Idempotent. The relay is kept out while the outbox rows are rewritten, so no text the
        erase saw leaves for Kafka afterwards (what Kafka already holds stays until retention).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self.lock_chats(conn, [chat_id]):
                raise UnknownChat(f"chat {chat_id} does not exist")
            erased = await conn.fetchval(self.q.erase_chat_texts, chat_id)
            await conn.execute(self.q.lock_outbox_relay)
            await conn.execute(self.q.erase_outbox_texts, chat_id)
        return erased

    def retention_jobs(self) -> list[PruneJob]:
        """What the assigner's retention loop prunes: applied ids past the dedup window, old texts."""
        s = self.settings
        jobs = [EventIds("assigner").prune_job(timedelta(seconds=s.dedup_window_s))]
        if s.message_retention_days > 0:
            jobs.append(PruneJob("assigner.messages.text", self.q.purge_completed_texts,
                                 timedelta(days=s.message_retention_days), batch_divisor=TEXT_PURGE_DIVISOR))
        return jobs


def _command_of(event: events.Envelope, at: datetime):
    p = event.payload
    if event.type == "user_message":
        return domain.ReceiveUserMessage(message_id=p.message_id, text=p.text, sent_at=p.sent_at, at=at)
    if event.type == "operator_message":
        return domain.ReceiveOperatorMessage(message_id=p.message_id, operator_id=p.operator_id, text=p.text,
                                             sent_at=p.sent_at, at=at)
    if event.type == "assignment_idle":
        return domain.TimeOutAssignment(assignment_id=p.assignment_id, at=at)
    raise TypeError(f"the assigner does not apply {event.type}")
