"""Routing use cases (docs/contract.md "Routing"): queues, operator profiles, presence, and an admin's
routing of a chat. Each opens one transaction, loads through the repository, decides with the domain
(domain.py, routing.py) and saves the changes, as usecases.Assigner does for the chat state machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime

import asyncpg

from services.assigner import domain, routing
from services.assigner.allocation import Held
from services.assigner.domain import Chat, Decision, Fact, Route
from services.assigner.repository import Changes, profile_of
from services.assigner.routing import Profile, Queue
from services.assigner.usecases import Assigner, count_outcomes
from shared import events

OPERATOR_TRIES = 3  # an operator's held chats changed between the read and the lock: read again


def profile_view(profile: Profile) -> dict:
    """An operator profile as the API shows it."""
    return {
        "operator_id": profile.operator_id,
        "display_name": profile.display_name,
        "queues": list(profile.queues),
        "skills": sorted(profile.skills),
        "capacity": profile.capacity,
        "status": profile.status,
    }


def _status_fact(
    operator_id: str, status: str, previous: str, by: str, at: datetime, returned: int
) -> tuple[str, None, Decision, datetime]:
    """The operator_status_changed fact, as Changes.add takes it (keyed by operator_key, no chat)."""
    payload = events.OperatorStatusChangedPayload(
        operator_id=operator_id,
        status=status,  # type: ignore[arg-type]
        previous_status=previous,  # type: ignore[arg-type]
        by=by,  # type: ignore[arg-type]
        changed_at=at,
        returned_chats=returned,
    )
    return events.operator_key(operator_id), None, Decision(None, [Fact("operator_status_changed", payload)]), at


class RoutingCommands:
    """Admins' and operators' routing commands over the assigner's pool, repository and clock."""

    def __init__(self, assigner: Assigner):
        self.assigner = assigner
        self.pool = assigner.pool
        self.repo = assigner.repo
        self.q = assigner.repo.q
        self.clock = assigner.clock
        self.settings = assigner.settings

    # ---- queues ---------------------------------------------------------------------------------

    async def put_queue(self, queue: Queue) -> tuple[dict, bool]:
        """Create or replace a queue (at most routing.MAX_QUEUES); returns it and whether it is new."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(self.q.lock_queue_table)
            before = await self.repo.queue(conn, queue.queue_id)
            routing.check_queue_room(before is not None, await conn.fetchval(self.q.count_queues))
            await conn.execute(self.q.upsert_queue, *asdict(queue).values())
            if before is not None and before.priority_step_s != queue.priority_step_s:
                await conn.execute(self.q.rerank_queue, queue.queue_id, queue.priority_step_s)
            row = await conn.fetchrow(self.q.queue_by_id, queue.queue_id)
        return dict(row), before is None

    async def get_queue(self, queue_id: str) -> dict | None:
        """One queue (None: no such queue)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self.q.queue_by_id, queue_id)
        return dict(row) if row is not None else None

    async def queues_page(self, limit: int, after: str | None) -> tuple[list[dict], str | None]:
        """One page of queues by id, and the id to resume after (None on the last page)."""
        async with self.pool.acquire() as conn:
            rows = [dict(r) for r in await conn.fetch(self.q.queues_page, limit + 1, after)]
        return rows[:limit], rows[limit - 1]["queue_id"] if len(rows) > limit else None

    async def delete_queue(self, queue_id: str) -> int:
        """Delete a queue: its open chats move to `default` keeping their waiting time; returns how many moved."""
        routing.check_deletable(queue_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(self.q.lock_queue_table)
            # The queue row first (waits for consumers routing into it), then its chats: their order too.
            if await conn.fetchval(self.q.delete_queue, queue_id) is None:
                raise routing.UnknownQueue(f"queue {queue_id} does not exist")
            ids = [r["chat_id"] for r in await conn.fetch(self.q.chats_in_queue, queue_id)]
            chats = await self.repo.lock_chats(conn, ids)
            now = self.clock()
            changes = Changes()
            cmd = domain.RouteChat(Route(queue_id=events.DEFAULT_QUEUE), now, by="queue_deleted")
            for chat in chats.values():
                changes.add(chat.chat_id, chat, domain.decide(chat, cmd), now)
            await self.repo.persist(conn, changes, now)
            await conn.execute(self.q.move_completed_chats, queue_id)
            await conn.execute(self.q.drop_queue_from_operators, queue_id)
        return len(chats)

    # ---- operator profiles --------------------------------------------------------------------

    async def put_operator(self, profile: Profile) -> tuple[dict, bool]:
        """Create or replace an operator's profile (its status is kept); every queue named must exist."""
        async with self.pool.acquire() as conn, conn.transaction():
            known = await self.repo.known_queues(conn, profile.queues)
            routing.check_profile_queues(profile.queues, known)
            existed = await conn.fetchval(self.q.operator_by_id, profile.operator_id) is not None
            row = await conn.fetchrow(
                self.q.upsert_operator,
                profile.operator_id,
                profile.display_name,
                list(dict.fromkeys(profile.queues)),
                sorted(profile.skills),
                profile.capacity,
            )
        return profile_view(profile_of(row)), not existed

    async def get_operator(self, operator_id: str, or_default: bool = False) -> dict | None:
        """An operator's profile (None when it has none, or the default profile if `or_default`)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self.q.operator_by_id, operator_id)
        if row is None:
            return profile_view(routing.default_profile(operator_id)) if or_default else None
        return profile_view(profile_of(row))

    async def operators_page(self, limit: int, after: str | None) -> tuple[list[dict], str | None]:
        """One page of operator profiles by id, and the id to resume after (None on the last page)."""
        async with self.pool.acquire() as conn:
            rows = [profile_view(profile_of(r)) for r in await conn.fetch(self.q.operators_page, limit + 1, after)]
        return rows[:limit], rows[limit - 1]["operator_id"] if len(rows) > limit else None

    async def delete_operator(self, operator_id: str) -> int:
        """Remove an operator's profile; the chats it holds go back to their queues. Returns how many."""

        async def remove(conn, chats, held, now, changes) -> int:
            status = await conn.fetchval(self.q.delete_operator, operator_id)
            if status is None and not held:
                raise routing.UnknownOperator(f"operator {operator_id} has no profile")
            self._return_chats(operator_id, chats, held, now, changes)
            changes.add(*_status_fact(operator_id, "offline", status or "available", "removed", now, len(held)))
            return len(held)

        return await self._on_operator(operator_id, remove)

    async def set_status(self, operator_id: str, status: str, by: str) -> dict:
        """Set an operator's presence; offline returns its chats to their queues at once. Returns the profile."""

        async def change(conn, chats, held, now, changes) -> int:
            previous = await conn.fetchval(self.q.set_operator_status, operator_id, status)
            returned = held if status == "offline" else []
            self._return_chats(operator_id, chats, returned, now, changes)
            if previous != status or returned:
                changes.add(*_status_fact(operator_id, status, previous, by, now, len(returned)))
            return len(returned)

        await self._on_operator(operator_id, change)
        view = await self.get_operator(operator_id, or_default=True)
        assert view is not None
        return view

    def _return_chats(
        self, operator_id: str, chats: dict[str, Chat], held: list[Held], now: datetime, changes: Changes
    ) -> None:
        """Each held chat back to its queue, keeping its waiting time (the assignment ends as released)."""
        for h in held:
            chat = chats[h.chat_id]
            cmd = domain.ReleaseAssignment(operator_id=operator_id, assignment_id=h.assignment_id, at=now)
            decision = domain.decide(chat, cmd)
            if decision.chat is not None:
                chats[chat.chat_id] = decision.chat
            changes.add(chat.chat_id, chat, decision, now)

    async def _on_operator(
        self,
        operator_id: str,
        apply: Callable[[asyncpg.Connection, dict[str, Chat], list[Held], datetime, Changes], Awaitable[int]],
    ) -> int:
        """Run `apply` holding the operator's chats and then the operator (the order every transaction
        locks them), with the chats it holds now; retried if a pull gave it one between the read and the lock."""
        domain.check_operator_id(operator_id)
        for _ in range(OPERATOR_TRIES):
            async with self.pool.acquire() as conn, conn.transaction():
                seen = await self.repo.held_by_one(conn, operator_id)
                chats = await self.repo.lock_chats(conn, [h.chat_id for h in seen])
                await self.repo.lock_operator(conn, operator_id)
                held = await self.repo.held_by_one(conn, operator_id)
                if not {h.chat_id for h in held} <= set(chats):
                    continue
                now = self.clock()
                changes = Changes()
                done = await apply(conn, chats, held, now, changes)
                await self.repo.persist(conn, changes, now)
            count_outcomes(changes)
            return done
        raise domain.DomainError(f"operator {operator_id} kept getting chats; retry")

    # ---- a chat's routing ---------------------------------------------------------------------

    async def route_chat(self, chat_id: str, route: events.Routing) -> dict:
        """An admin sets a chat's queue, priority or skills (the queue must exist); returns the chat's view."""
        async with self.pool.acquire() as conn, conn.transaction():
            if route.queue is not None:
                routing.check_profile_queues([route.queue], await self.repo.known_queues(conn, [route.queue]))
            chat = (await self.repo.lock_chats(conn, [chat_id])).get(chat_id)
            if chat is None:
                raise domain.UnknownChat(f"chat {chat_id} does not exist")
            now = self.clock()
            cmd = domain.RouteChat(routing.resolve(route, {route.queue} if route.queue else set()) or Route(), now)
            changes = Changes()
            changes.add(chat_id, chat, domain.decide(chat, cmd), now)
            await self.repo.persist(conn, changes, now)
            view = (await self.repo.views(conn, [chat_id]))[chat_id]
        return view
