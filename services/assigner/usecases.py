"""The assigner's use cases: each opens (or joins) one transaction, loads through the repository,
decides with the domain, and saves the changes.

Time comes from an injected clock, read under the locks so times follow commit order; tests pass
one they move instead of sleeping. Commands return what they did.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

import asyncpg

from services.assigner import allocation, domain, metrics, routing
from services.assigner.domain import Chat
from services.assigner.repository import Changes, Repository
from services.assigner.routing import Profile, Queue
from shared import events
from shared.db import DATABASE_DOWN
from shared.retention import PruneJob
from shared.settings import Settings
from shared.tracking import EventIds

CLAIM_SLACK = 4  # extra candidates a batch of pulls locks, for pullers who may not take the oldest
TEXT_PURGE_DIVISOR = 50  # a purge batch takes retention_batch_size / 50 chats (each with all its messages)


class Clock(Protocol):
    """Now, as an aware datetime (production: shared.events.utcnow)."""

    def __call__(self) -> datetime: ...


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's pull, release or completion, applied in a batch with others."""

    kind: Literal["pull", "release", "complete"]
    operator_id: str
    assignment_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Pulled:
    """The outcome of a pull or a reassignment: the assignment given (or kept), or nothing."""

    assignment_id: uuid.UUID | None
    chat_id: str | None
    assigned_at: datetime | None
    new: bool
    idle_timeout_s: int | None = None  # the chat's queue's override of the idle timeout, if any


NOTHING = Pulled(None, None, None, new=False)


def count_outcomes(changes: Changes) -> None:
    """Bump assignment counters once the transaction committed."""
    for _chat_id, fact, _at in changes.facts:
        if fact.type == "chat_assigned":
            metrics.ASSIGNMENTS_STARTED.labels(fact.payload.via).inc()
        elif fact.type == "assignment_ended":
            metrics.ASSIGNMENTS_ENDED.labels(fact.payload.outcome).inc()
        elif fact.type == "chat_routed" and fact.payload.requested_queue is not None:
            metrics.ROUTING_FALLBACKS.inc()


class Assigner:
    """The assigner's use cases over a Postgres pool."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, clock: Clock = events.utcnow, repository: Repository | None = None
    ):
        self.pool = pool
        self.settings = settings
        self.clock: Callable[[], datetime] = clock
        self.repo = repository or Repository()

    count_outcomes = staticmethod(count_outcomes)

    # ---- consumer: inbound messages and idle timeouts -----------------------------------------

    async def apply_events(self, conn: asyncpg.Connection, items: list[events.Envelope]) -> Changes:
        """Apply inbound messages and timeouts of one partition batch, in order, inside `conn`'s transaction.

        A message already stored (the same message under another event id) is applied once only.
        """
        messages = [(e.chat_id, e.payload.message_id) for e in items if e.type in ("user_message", "operator_message")]
        # Queues first (key-share locks), then chats: the order a queue's deletion takes them too.
        asked = {e.payload.routing.queue for e in items if isinstance(e, events.UserMessage) and e.payload.routing}
        asked.discard(None)
        queues = await self.repo.known_queues(conn, asked) if asked else set()
        queues.add(events.DEFAULT_QUEUE)
        chats, known = await self.repo.lock_chats_with_known(conn, {e.chat_id for e in items}, messages)
        changes = Changes()
        for event in items:
            at = self.clock()
            route = routing.resolve(event.payload.routing, queues) if isinstance(event, events.UserMessage) else None
            cmd = domain.command_of(event, at, route)
            if isinstance(cmd, (domain.ReceiveUserMessage, domain.ReceiveOperatorMessage)):
                key = (event.chat_id, cmd.message_id)
                if key in known:
                    continue
                known.add(key)
            before = chats.get(event.chat_id)
            decision = domain.decide(before, cmd, event.chat_id)
            if decision.chat is not None:
                chats[event.chat_id] = decision.chat
            changes.add(event.chat_id, before, decision, at, event.event_id)
        await self.repo.persist(conn, changes, self.clock())
        return changes

    # ---- operators: pulls, releases and completions in one transaction ------------------------

    async def operator_batch(self, commands: list[OperatorCommand]) -> tuple[list[object], Changes]:
        """Apply operators' pulls, releases and completions together, in one transaction.

        Returns one result per command, in order (a `(Pulled, view)` pair for a pull, the chat id for
        a release or completion, the domain.DomainError that refused it, or for a pull the database
        error that kept its view from being read after the commit) and the changes, whose
        outcomes the caller counts once committed. Lock order: chats of released/completed
        assignments (sorted, may wait), then the pullers' advisory locks (sorted, may wait), then
        waiting chats with SKIP LOCKED (never waits): no cycle with the consumer or another batch.
        """
        results: list[object] = [None] * len(commands)
        changes = Changes()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                enders = [i for i, c in enumerate(commands) if c.kind != "pull"]
                if enders:
                    await self._endings(conn, commands, enders, results, changes)
                pullers = [i for i, c in enumerate(commands) if c.kind == "pull"]
                if pullers:
                    await self._pulls(conn, commands, pullers, results, changes)
                await self.repo.persist(conn, changes, self.clock())
            # The pulled chats' views are read once committed, as GET /v1/assignments/current reads
            # them: the chats' locks are not held through this read (the consumer applying a pulled
            # chat's next user message waits for them), and a view shows what others may already see.
            shown = sorted({r.chat_id for r in results if isinstance(r, Pulled) and r.chat_id is not None})
            views = await self._views_after_commit(conn, shown, results)
        for i, r in enumerate(results):
            if isinstance(r, Pulled):
                results[i] = (r, views.get(r.chat_id) if r.chat_id is not None else None)
        return results, changes

    async def _views_after_commit(self, conn: asyncpg.Connection, shown: list[str], results: list) -> dict[str, dict]:
        """The views of the pulled chats. If Postgres fails now, the pulls' callers get that error (a
        503; the chats they were given stay theirs, as GET /v1/assignments/current shows) while the
        batch's releases and completions, committed, keep their answers."""
        if not shown:
            return {}
        try:
            return await self.repo.views(conn, shown)
        except DATABASE_DOWN as exc:
            for i, r in enumerate(results):
                if isinstance(r, Pulled):
                    results[i] = exc
            return {}

    async def _endings(
        self,
        conn: asyncpg.Connection,
        commands: list[OperatorCommand],
        enders: list[int],
        results: list,
        changes: Changes,
    ) -> None:
        """Releases and completions of a batch, on the chats of their assignments (locked)."""
        records, chats = await self.repo.lock_chats_of_assignments(conn, (commands[i].assignment_id for i in enders))
        now = self.clock()  # read under the locks: times follow commit order
        for i in enders:
            c = commands[i]
            record = records.get(c.assignment_id)
            try:
                cmd = domain.ending_command(c.kind, c.operator_id, c.assignment_id, record, now)
                chat = chats[record.chat_id]
                decision = domain.decide(chat, cmd)
            except domain.DomainError as exc:
                results[i] = exc
                continue
            except ValueError as exc:  # pydantic's ValidationError too: this command's data
                results[i] = domain.InvalidCommand(f"{c.kind} refused: {exc}")
                continue
            if decision.chat is not None:
                chats[chat.chat_id] = decision.chat
            changes.add(chat.chat_id, chat, decision, now)
            results[i] = chat.chat_id

    async def _pulls(
        self,
        conn: asyncpg.Connection,
        commands: list[OperatorCommand],
        pullers: list[int],
        results: list,
        changes: Changes,
    ) -> None:
        """Pulls of a batch: room is counted under each puller's lock; the oldest chats go first."""
        for i in pullers:
            try:
                domain.check_operator_id(commands[i].operator_id)  # no event could carry it: this pull alone
            except domain.InvalidCommand as exc:
                results[i] = exc
        pullers = [i for i in pullers if results[i] is None]
        if not pullers:
            return
        operators = sorted({commands[i].operator_id for i in pullers})
        await self.repo.lock_operators(conn, operators)
        # Profiles, presence and held chats are read under the operators' locks: a status change or
        # another pull of theirs waits for this batch.
        found, queues, routed, held_now = await self.repo.routing_context(conn, operators)
        profiles = {op: found.get(op) or routing.default_profile(op) for op in operators}
        for i in pullers:
            try:
                routing.check_may_pull(profiles[commands[i].operator_id])
            except domain.DomainError as exc:
                results[i] = exc
        pullers = [i for i in pullers if results[i] is None]
        ended = changes.ended_assignments()
        held = {op: [h for h in hs if h.assignment_id not in ended] for op, hs in held_now.items()}
        cooldown_s = self.settings.repeat_cooldown_s
        capacity = {op: routing.capacity_of(p, self.settings.operator_capacity) for op, p in profiles.items()}
        room = allocation.with_room(
            [commands[i].operator_id for i in pullers], {op: len(hs) for op, hs in held.items()}, capacity
        )
        wanting = [i for i, fits in zip(pullers, room) if fits]
        if wanting:
            wanters = [profiles[commands[i].operator_id] for i in wanting]
            # Unrouted (no waiting chat routed, no puller with a profile): §3's global FIFO claim.
            plain = not routed and not any(commands[i].operator_id in found for i in wanting)
            limit = len(wanting) + CLAIM_SLACK
            if plain:
                claimed = await self.repo.claim_waiting(conn, limit)
            else:
                lanes = await self.repo.waiting_lanes(conn, routing.queues_of(wanters))
                claims = routing.claims(lanes, wanters, queues, self.clock(), CLAIM_SLACK)
                claimed = await self.repo.claim_lanes(conn, claims)
            # After the reads and the claim: a new assignment starts after every end this transaction
            # saw, its own and those committed by others before the claim locked their chats, so the
            # recorded history never shows an operator over capacity or a chat held twice at once.
            now = self.clock()
            candidates = allocation.pull_candidates(claimed, changes.chats.values())
            picks = routing.match(wanters, candidates, queues, now, cooldown_s)
            given = [p.chat_id for p in picks if p is not None]
            for i, pick in zip(wanting, picks):
                op = commands[i].operator_id
                further = allocation.looks_further(pick, len(claimed), limit) if plain else not pick and claimed
                if further:
                    # The spare-candidate fallback: every candidate was its own recent chat (or, routed,
                    # one it may not take); one further down may be its own.
                    pick = await self._further(conn, profiles[op], queues, plain, now, given)
                    if pick is not None:
                        given.append(pick.chat_id)
                        now = max(now, self.clock())  # this chat was locked just now: start after its last end
                if pick is None:
                    results[i] = NOTHING
                    continue
                results[i] = self._assign(pick, op, now, changes, queues.get(pick.queue_id) or Queue())
                if isinstance(results[i], Pulled):
                    held[op].append(allocation.Held(results[i].assignment_id, pick.chat_id, now))
        for i in pullers:
            if results[i] is None:  # at capacity: the current assignment (retry-safe pull)
                current = allocation.current_of(held[commands[i].operator_id])
                results[i] = (
                    Pulled(current.assignment_id, current.chat_id, current.started_at, new=False)
                    if current
                    else NOTHING
                )

    async def _further(
        self,
        conn: asyncpg.Connection,
        profile: Profile,
        queues: dict[str, Queue],
        plain: bool,
        now: datetime,
        given: list[str],
    ) -> Chat | None:
        """One puller's next chat past those already claimed: the first it may take, locked (SKIP LOCKED)."""
        op, default_s = profile.operator_id, self.settings.repeat_cooldown_s
        if plain:
            cooldown_s = routing.cooldown_of(queues.get(events.DEFAULT_QUEUE), default_s)
            found = await self.repo.claim_next(conn, op, allocation.cooled_before(now, cooldown_s), given)
            candidates = [found] if found is not None else []
        else:
            lanes = await self.repo.waiting_lanes(conn, list(profile.queues))
            claims = routing.fallback_claims(lanes, profile, queues, now)
            cooled = [
                allocation.cooled_before(now, routing.cooldown_of(queues.get(c.lane.queue_id), default_s))
                for c in claims
            ]
            candidates = sorted(await self.repo.claim_lanes(conn, claims, op, cooled, given), key=routing.rank_key)
        return routing.match([profile], candidates, queues, now, default_s)[0]

    @staticmethod
    def _assign(
        pick: Chat, operator_id: str, now: datetime, changes: Changes, queue: Queue
    ) -> Pulled | domain.DomainError:
        """Give the picked chat to the puller, or the refusal of this pull alone (its chat stays waiting)."""
        cmd = domain.AssignToPuller(
            operator_id=operator_id,
            assignment_id=events.new_event_id(),
            at=now,
            sla_s=queue.sla_first_assignment_s,
            idle_timeout_s=queue.idle_timeout_s,
        )
        try:
            decision = domain.decide(pick, cmd)
        except domain.DomainError as exc:
            return exc
        except ValueError as exc:
            return domain.InvalidCommand(f"pull refused: {exc}")
        changes.add(pick.chat_id, pick, decision, now)
        return Pulled(cmd.assignment_id, pick.chat_id, now, new=True, idle_timeout_s=queue.idle_timeout_s)

    # ---- admins: reassign, complete, erase ----------------------------------------------------

    async def _command_on_chat(
        self, chat_id: str, command_at, operator_lock: str | None = None
    ) -> tuple[Chat, dict, domain.Decision]:
        """Apply one admin command to a chat in its own transaction; the chat after it, and its view.

        Locks in the order every transaction takes them: the chat, then (for a reassign) the target
        operator, as a batch locks chats of ended assignments before pullers. `command_at(now)` builds
        the command with the time read under the locks, so times follow commit order.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            chat = (await self.repo.lock_chats(conn, [chat_id])).get(chat_id)
            if chat is None:
                raise domain.UnknownChat(f"chat {chat_id} does not exist")
            if operator_lock is not None:
                await self.repo.lock_operator(conn, operator_lock)
            cmd = command_at(self.clock())
            if isinstance(cmd, domain.ReassignChat):
                cmd = await self._checked_reassign(conn, chat, cmd)
            decision = domain.decide(chat, cmd)
            changes = Changes()
            changes.add(chat_id, chat, decision, cmd.at)
            await self.repo.persist(conn, changes, self.clock())
            view = (await self.repo.views(conn, [chat_id]))[chat_id]
        count_outcomes(changes)
        return decision.chat or chat, view, decision

    async def _checked_reassign(
        self, conn: asyncpg.Connection, chat: Chat, cmd: domain.ReassignChat
    ) -> domain.ReassignChat:
        """A reassignment to an operator who is not offline and has room (its own capacity), with the
        chat's queue's SLA and idle override."""
        found, _, _, held_now = await self.repo.routing_context(conn, [cmd.operator_id])
        profile = found.get(cmd.operator_id) or routing.default_profile(cmd.operator_id)
        if profile.status == "offline":
            raise routing.OperatorUnavailable(f"operator {cmd.operator_id} is offline")
        held = held_now[cmd.operator_id]
        capacity = routing.capacity_of(profile, self.settings.operator_capacity)
        domain.check_room(cmd.operator_id, chat.chat_id, [h.chat_id for h in held], capacity)
        queue = await self.repo.queue(conn, chat.queue_id) or Queue()
        # The assignment starts after the held read, as a pull's does: an end the read saw committed
        # (the consumer takes no operator lock) may carry a time later than `cmd.at`.
        at = max(cmd.at, self.clock())
        return replace(cmd, at=at, sla_s=queue.sla_first_assignment_s, idle_timeout_s=queue.idle_timeout_s)

    async def admin_complete(self, admin: str, chat_id: str) -> dict:
        """An admin completes a chat in any state; returns the chat's view as committed."""
        _, view, _ = await self._command_on_chat(chat_id, lambda now: domain.CompleteChat(by=f"admin:{admin}", at=now))
        return view

    async def reassign(self, chat_id: str, operator_id: str) -> tuple[Pulled, dict]:
        """An admin gives a chat to an operator (who must have room): the assignment it holds now, and the view.

        The assignment is the one this transaction created, or the operator's current one on this
        chat when it already held it: what was done, not a later re-read that may see another
        chat of the same operator.
        """
        assignment_id = events.new_event_id()
        chat, view, decision = await self._command_on_chat(
            chat_id,
            lambda now: domain.ReassignChat(operator_id=operator_id, assignment_id=assignment_id, at=now),
            operator_lock=operator_id,
        )
        idle = next((f.payload.idle_timeout_s for f in decision.facts if f.type == "chat_assigned"), None)
        new = chat.assignment_id == assignment_id
        return Pulled(chat.assignment_id, chat_id, chat.assignment_started_at, new=new, idle_timeout_s=idle), view

    async def erase_chat_content(self, chat_id: str) -> int:
        """Remove every stored text of a chat (messages, unpublished facts), keeping every row; returns texts removed.

        Idempotent. What Kafka already holds stays until its retention.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self.repo.lock_chats(conn, [chat_id]):
                raise domain.UnknownChat(f"chat {chat_id} does not exist")
            return await self.repo.erase_texts(conn, chat_id)

    # ---- reads ----------------------------------------------------------------------------------

    async def current(self, operator_id: str) -> Pulled:
        """The operator's oldest active assignment, if any."""
        async with self.pool.acquire() as conn:
            current = allocation.current_of(await self.repo.held_by_one(conn, operator_id))
        return Pulled(current.assignment_id, current.chat_id, current.started_at, new=False) if current else NOTHING

    async def chat_view(self, chat_id: str) -> dict | None:
        """The chat as the API shows it, messages included (None when it does not exist)."""
        async with self.pool.acquire() as conn:
            return (await self.repo.views(conn, [chat_id])).get(chat_id)

    async def queue_summary(self) -> dict:
        """Counts per state, oldest waiting age, active assignments per operator."""
        async with self.pool.acquire() as conn:
            counts, oldest, holders = await self.repo.queue_counts(conn)
        return {
            "chats_by_state": {s: counts.get(s, 0) for s in domain.STATES},
            "oldest_waiting_since": oldest,
            "oldest_waiting_age_s": (self.clock() - oldest).total_seconds() if oldest else 0.0,
            "active_assignments": sum(n for _, n in holders),
            "operators": [{"operator_id": op, "active_assignments": n} for op, n in holders],
        }

    async def stuck_chats(
        self, older_than_s: float, limit: int, after: tuple[datetime, str] | None = None
    ) -> tuple[list[dict], tuple[datetime, str] | None]:
        """One page of chats waiting or assigned for longer than `older_than_s`, oldest first.

        Returns the rows and the sort key to resume after (None on the last page).
        """
        cutoff = self.clock() - timedelta(seconds=older_than_s)
        async with self.pool.acquire() as conn:
            rows = await self.repo.stuck_page(conn, cutoff, limit + 1, after)
        page = rows[:limit]
        resume = (page[-1]["since"], page[-1]["chat_id"]) if len(rows) > limit else None
        for row in page:
            del row["since"]
        return page, resume

    async def routing_gauges(self) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
        """Per queue: waiting chats and the oldest one's age in seconds; operators per status."""
        async with self.pool.acquire() as conn:
            rows, statuses = await self.repo.routing_gauges(conn)
        now = self.clock()
        return {q: (n, (now - oldest).total_seconds() if oldest else 0.0) for q, n, oldest in rows}, statuses

    async def outbox_backlog(self) -> int:
        """Facts committed and not yet published."""
        async with self.pool.acquire() as conn:
            return await self.repo.outbox_backlog(conn)

    def retention_jobs(self) -> list[PruneJob]:
        """What the assigner's retention loop prunes: applied ids past the dedup window, old texts."""
        s, q = self.settings, self.repo.q
        jobs = [EventIds("assigner").prune_job(timedelta(seconds=s.dedup_window_s))]
        if s.message_retention_days > 0:
            jobs.append(
                PruneJob(
                    "assigner.messages.text",
                    q.purge_completed_texts,
                    timedelta(days=s.message_retention_days),
                    batch_divisor=TEXT_PURGE_DIVISOR,
                )
            )
        return jobs
