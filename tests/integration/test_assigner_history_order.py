"""The assignments' recorded times follow commit order, even when a pull races a timeout (real Postgres)."""

import uuid

import asyncpg

from services.assigner.repository import QUERIES
from services.assigner.usecases import Assigner, OperatorCommand
from shared import db
from shared.events import AssignmentIdle, AssignmentIdlePayload, new_event_id, utcnow
from tests.harness import user_message


async def apply_in_own_transaction(store: Assigner, pool: asyncpg.Pool, event) -> None:
    """What the worker's consumer does with one event (its own transaction and connection)."""
    async with pool.acquire() as conn, conn.transaction():
        await store.apply_events(conn, [event])


async def test_a_pull_racing_a_timeout_starts_its_assignment_after_the_timed_out_one_ended(env, monkeypatch):
    pool = await db.create_pool(env.database_url, min_size=1, max_size=4)
    store = Assigner(pool, env.with_settings(repeat_cooldown_s=0))
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    try:
        await apply_in_own_transaction(store, pool, user_message(chat))
        ((first, _),) = (await store.operator_batch([OperatorCommand("pull", "op-a")]))[0]
        assert first.chat_id == chat
        timeout = AssignmentIdle(
            event_id=new_event_id(),
            chat_id=chat,
            occurred_at=utcnow(),
            producer="test",
            payload=AssignmentIdlePayload(assignment_id=first.assignment_id, operator_id="op-a", deadline=utcnow()),
        )

        # op-b's pull batch has begun when the worker takes the chat back from op-a and commits; the
        # batch then looks for waiting chats and finds it. (The interleaving a loaded machine makes.)
        original = asyncpg.connection.Connection.fetch
        raced = []

        async def fetch(self, query, *args, **kwargs):
            if query == QUERIES.claim_waiting_chats and not raced:
                raced.append(True)
                await apply_in_own_transaction(store, pool, timeout)
            return await original(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, "fetch", fetch)
        ((second, _),) = (await store.operator_batch([OperatorCommand("pull", "op-b")]))[0]
        monkeypatch.undo()
        assert raced and second.chat_id == chat

        async with pool.acquire() as conn:
            rows = {
                r["operator_id"]: r
                for r in await conn.fetch(
                    "SELECT operator_id, started_at, ended_at, outcome FROM assigner.assignments WHERE chat_id = $1",
                    chat,
                )
            }
        assert rows["op-a"]["outcome"] == "timed_out"
        # Never two assignments of one chat at once, in the recorded history too.
        assert rows["op-b"]["started_at"] >= rows["op-a"]["ended_at"], dict(rows)
    finally:
        await pool.close()
