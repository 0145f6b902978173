"""The assigner's use cases on real Postgres with a clock the test moves: time passes without sleeping."""

import uuid
from datetime import timedelta

import pytest

from services.assigner import domain
from services.assigner.usecases import NOTHING, Assigner, OperatorCommand
from shared.db import create_pool
from shared.events import utcnow
from tests.harness import operator_message, user_message


class MovedClock:
    """A clock that stands still until the test moves it."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def assigner(env):
    """The use cases over a pool of their own, with a clock that stands still until the test moves it."""
    pool = await create_pool(env.database_url, min_size=1, max_size=3)
    try:
        yield Assigner(pool, env.settings, clock=MovedClock())
    finally:
        await pool.close()


async def queued(assigner: Assigner, clock: MovedClock, *chat_ids: str) -> None:
    """Users write into new chats, one second apart, as the consumer would apply it."""
    for chat_id in chat_ids:
        async with assigner.pool.acquire() as conn, conn.transaction():
            await assigner.apply_events(conn, [user_message(chat_id, "hey")])
        clock.advance(1)


async def pull(assigner: Assigner, operator_id: str):
    (result,), _ = await assigner.operator_batch([OperatorCommand("pull", operator_id)])
    return result


async def release(assigner: Assigner, operator_id: str, assignment_id: uuid.UUID) -> str:
    (result,), _ = await assigner.operator_batch([OperatorCommand("release", operator_id, assignment_id)])
    assert isinstance(result, str), result
    return result


async def test_a_lone_operator_gets_the_chat_back_once_the_clock_passes_the_cooldown(env, assigner):
    clock = assigner.clock
    cooldown = env.settings.repeat_cooldown_s
    await queued(assigner, clock, "chat-lone")
    got, view = await pull(assigner, "op-a")
    assert got.new and view["state"] == "assigned"
    await release(assigner, "op-a", got.assignment_id)
    clock.advance(cooldown - 0.001)
    assert await pull(assigner, "op-a") == (NOTHING, None)
    clock.advance(0.001)
    again, view = await pull(assigner, "op-a")
    assert again.new and again.chat_id == "chat-lone" and again.assigned_at == clock.now
    assert view["assigned_operator_id"] == "op-a"


async def test_an_operator_whose_own_recent_chats_fill_the_claim_gets_one_further_down_the_queue(env, assigner):
    """The spare-candidate fallback: a pull's claim (1 + CLAIM_SLACK chats) holds only chats the
    operator released within the cooldown, so the chat behind them is found by the next query."""
    clock = assigner.clock
    own = [f"chat-own-{i}" for i in range(5)]
    await queued(assigner, clock, *own, "chat-behind")
    for chat_id in own:  # each pull gives the oldest chat op-a did not just release
        got, _ = await pull(assigner, "op-a")
        assert got.chat_id == chat_id
        await release(assigner, "op-a", got.assignment_id)
    behind, _ = await pull(assigner, "op-a")
    assert behind.new and behind.chat_id == "chat-behind"
    await release(assigner, "op-a", behind.assignment_id)
    clock.advance(env.settings.repeat_cooldown_s)
    oldest, _ = await pull(assigner, "op-a")
    assert oldest.chat_id == own[0]  # cooled down: the queue's head again


async def test_a_chat_is_stuck_and_ages_in_the_queue_as_the_clock_moves(assigner):
    clock = assigner.clock
    await queued(assigner, clock, "chat-slow")
    assert (await assigner.stuck_chats(older_than_s=300, limit=10))[0] == []
    clock.advance(300)
    page, resume = await assigner.stuck_chats(older_than_s=300, limit=10)
    assert [c["chat_id"] for c in page] == ["chat-slow"] and resume is None
    summary = await assigner.queue_summary()
    assert summary["oldest_waiting_age_s"] == 301.0


async def test_a_message_id_known_in_one_chat_is_new_in_another_and_a_retry_is_applied_once(assigner):
    pool = assigner.pool
    async with pool.acquire() as conn, conn.transaction():
        await assigner.apply_events(conn, [user_message("chat-a", "first", message_id="m-1")])
    # One batch: chat-a's message again under a new event id, the same message id in chat-b, and a new one in chat-a.
    batch = [
        user_message("chat-a", "first", message_id="m-1"),
        user_message("chat-b", "other chat", message_id="m-1"),
        user_message("chat-a", "second", message_id="m-2"),
    ]
    async with pool.acquire() as conn, conn.transaction():
        changes = await assigner.apply_events(conn, batch)
    recorded = [(chat_id, f.payload.message_id) for chat_id, f, _ in changes.facts if f.type == "message_recorded"]
    assert recorded == [("chat-b", "m-1"), ("chat-a", "m-2")]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT chat_id, message_id, seq FROM assigner.messages ORDER BY chat_id, seq")
    assert [tuple(r) for r in rows] == [("chat-a", "m-1", 1), ("chat-a", "m-2", 2), ("chat-b", "m-1", 1)]


async def test_the_consumer_lock_returns_exactly_the_stored_messages_among_those_asked_per_chat(assigner):
    # Three chats with stored messages, probed together with new ones and a chat not stored yet: each
    # chat comes back locked with its own known ids only (the same id in another chat is not known there).
    stored = [("chat-k1", "m-1"), ("chat-k1", "m-2"), ("chat-k1", "m-3"), ("chat-k2", "m-1"), ("chat-k3", "m-9")]
    async with assigner.pool.acquire() as conn, conn.transaction():
        await assigner.apply_events(conn, [user_message(c, "hi", message_id=m) for c, m in stored])
    asked = [
        ("chat-k1", "m-1"),
        ("chat-k1", "m-3"),
        ("chat-k1", "m-4"),
        ("chat-k2", "m-2"),
        ("chat-k2", "m-1"),
        ("chat-k3", "m-1"),
        ("chat-new", "m-1"),
    ]
    async with assigner.pool.acquire() as conn, conn.transaction():
        chats, known = await assigner.repo.lock_chats_with_known(
            conn, ["chat-k1", "chat-k2", "chat-k3", "chat-new"], asked
        )
    assert sorted(chats) == ["chat-k1", "chat-k2", "chat-k3"]
    assert known == {("chat-k1", "m-1"), ("chat-k1", "m-3"), ("chat-k2", "m-1")}


async def test_one_batch_ends_checks_and_pulls_with_one_read_of_the_assignments_and_their_chats(assigner):
    clock, pool = assigner.clock, assigner.pool
    await queued(assigner, clock, "chat-1", "chat-2", "chat-3", "chat-4")
    (a, _), (b, _) = await pull(assigner, "op-a"), await pull(assigner, "op-b")
    # An ended assignment still names its chat: releasing it again is refused as ended, not unknown.
    await release(assigner, "op-b", b.assignment_id)
    (b2, _) = await pull(assigner, "op-b")
    unknown = uuid.uuid4()
    results, _ = await assigner.operator_batch(
        [
            OperatorCommand("release", "op-b", a.assignment_id),  # not theirs
            OperatorCommand("release", "op-a", unknown),
            OperatorCommand("release", "op-b", b.assignment_id),  # ended already
            OperatorCommand("complete", "op-a", a.assignment_id),
            OperatorCommand("complete", "op-b", b2.assignment_id),
            OperatorCommand("pull", "op-a"),
        ]
    )
    assert [type(r) for r in results[:3]] == [
        domain.NotYourAssignment,
        domain.UnknownAssignment,
        domain.AssignmentNotActive,
    ]
    assert results[3:5] == [a.chat_id, b2.chat_id]
    pulled, view = results[5]
    assert pulled.new and view["assigned_operator_id"] == "op-a"
    assert pulled.chat_id == b.chat_id  # the released chat kept its place, ahead of chat-4
    async with pool.acquire() as conn:
        ended = {
            r["assignment_id"]: r["outcome"]
            for r in await conn.fetch("SELECT assignment_id, outcome FROM assigner.assignments")
        }
    assert ended == {
        a.assignment_id: "completed",
        b.assignment_id: "released",
        b2.assignment_id: "completed",
        pulled.assignment_id: None,
    }


async def test_an_operators_first_reply_that_frees_them_sets_the_first_response_and_the_end_together(assigner):
    clock, pool = assigner.clock, assigner.pool
    await queued(assigner, clock, "chat-r")
    got, _ = await pull(assigner, "op-a")
    clock.advance(2)
    async with pool.acquire() as conn, conn.transaction():
        changes = await assigner.apply_events(
            conn, [operator_message("chat-r", "op-a", "first"), operator_message("chat-r", "op-a", "second")]
        )
    facts = {f.type: f.payload for _, f, _ in changes.facts}
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT first_response_at, ended_at, outcome FROM assigner.assignments WHERE assignment_id = $1",
            got.assignment_id,
        )
    assert row["outcome"] == "answered" and row["ended_at"] == facts["assignment_ended"].ended_at
    first = next(f.payload for _, f, _ in changes.facts if f.type == "message_recorded")
    assert first.first_response_ms is not None and row["first_response_at"] == first.recorded_at


async def test_a_pulls_chat_is_unlocked_while_its_view_is_read_and_a_failed_read_fails_only_the_pulls(assigner):
    clock, pool = assigner.clock, assigner.pool
    await queued(assigner, clock, "chat-v1", "chat-v2")
    first, _ = await pull(assigner, "op-a")
    read = assigner.repo.views
    lockable = []

    async def views_checking_locks(conn, chat_ids):
        # Another session may lock the chat at once: the batch's transaction has committed.
        async with pool.acquire() as other, other.transaction():
            rows = await other.fetch(
                "SELECT chat_id FROM assigner.chats WHERE chat_id = ANY($1::text[]) FOR UPDATE NOWAIT", chat_ids
            )
        lockable.extend(r["chat_id"] for r in rows)
        return await read(conn, chat_ids)

    assigner.repo.views = views_checking_locks
    got, view = await pull(assigner, "op-b")
    assert lockable == [got.chat_id] == ["chat-v2"] and view["assigned_operator_id"] == "op-b"

    async def views_failing(conn, chat_ids):
        raise ConnectionResetError("the connection dropped after the commit")

    assigner.repo.views = views_failing
    results, _ = await assigner.operator_batch(
        [OperatorCommand("release", "op-a", first.assignment_id), OperatorCommand("pull", "op-c")]
    )
    assert results[0] == "chat-v1" and isinstance(results[1], ConnectionResetError)
    assigner.repo.views = read
    current = await assigner.current("op-c")  # the pull was committed: the released chat-v1 is op-c's
    assert current.chat_id == "chat-v1" and not current.new


async def test_a_reassignment_starts_after_an_end_its_room_check_saw_committed(assigner):
    # An admin reassigns a chat to an operator at capacity (one, the default) while the consumer
    # applies that operator's reply, which frees them. Here the reply commits, with a later time,
    # between the reassignment's clock read and its read of the operator's held chats: the room
    # check sees the operator free, so the new assignment must start no earlier than that end, or
    # the recorded history shows the operator over capacity.
    clock, pool = assigner.clock, assigner.pool
    await queued(assigner, clock, "chat-held", "chat-given")
    held, _ = await pull(assigner, "op-a")
    assert held.chat_id == "chat-held"
    clock.advance(1)
    reads = assigner.repo.routing_context

    async def reply_commits_first(conn, operator_ids):
        if operator_ids == ["op-a"] and not reply_commits_first.done:
            reply_commits_first.done = True
            clock.advance(1)  # the consumer's time, read after the reassignment's
            async with pool.acquire() as other, other.transaction():
                await assigner.apply_events(other, [operator_message("chat-held", "op-a", "done")])
        return await reads(conn, operator_ids)

    reply_commits_first.done = False
    assigner.repo.routing_context = reply_commits_first
    got, _ = await assigner.reassign("chat-given", "op-a")
    assert got.new and reply_commits_first.done
    async with pool.acquire() as conn:
        rows = {
            r["chat_id"]: r
            for r in await conn.fetch(
                "SELECT chat_id, started_at, ended_at FROM assigner.assignments WHERE operator_id = 'op-a'"
            )
        }
    assert rows["chat-given"]["started_at"] >= rows["chat-held"]["ended_at"], rows
