"""The operator batcher's queueing and error isolation, with a stand-in store (no database)."""

import asyncio
import uuid

import asyncpg
import pytest

from services.assigner.batcher import OperatorBatcher
from shared.errors import ApiError
from shared.events import ChatAssignedPayload, utcnow


class FakeStore:
    """Records each batch; refuses any batch holding operator 'bad' as the database would.

    A gated store holds every batch at its start until the test opens the gate, so a test knows a
    batch is running (`started`) instead of guessing it from a sleep.
    """

    def __init__(self, gated: bool = False):
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def operator_batch(self, commands):
        self.batches.append([c.operator_id for c in commands])
        self.started.set()
        await self.gate.wait()
        self.refuse(commands)
        return [f"chat-of-{c.operator_id}" for c in commands], None

    def refuse(self, commands) -> None:
        if any(c.operator_id == "bad" for c in commands):
            raise asyncpg.DataError("invalid byte sequence")

    def count_outcomes(self, changes):
        pass


async def run_with(store, body):
    batcher = OperatorBatcher(store, workers=1)
    task = asyncio.create_task(batcher.run())
    try:
        return await body(batcher)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def queue_behind_a_running_batch(store, batcher, first: str, rest: list[str]):
    """Start `first`'s batch, hold it, queue `rest` meanwhile, then let it go; returns every task."""
    head = asyncio.create_task(batcher.pull(first))
    await store.started.wait()  # `first`'s batch is running (held at the gate)
    tail = [asyncio.create_task(batcher.pull(op)) for op in rest]
    await asyncio.sleep(0)  # one turn of the loop: each new task has queued its command
    store.gate.set()
    return head, tail


async def test_requests_queued_while_a_batch_runs_go_together_into_the_next():
    store = FakeStore(gated=True)

    async def body(batcher):
        first, rest = await queue_behind_a_running_batch(store, batcher, "op-1", [f"op-{i}" for i in range(2, 6)])
        return await asyncio.gather(first, *rest)

    answers = await run_with(store, body)
    assert answers == [f"chat-of-op-{i}" for i in range(1, 6)]
    assert store.batches == [["op-1"], ["op-2", "op-3", "op-4", "op-5"]]


async def test_data_the_database_refuses_fails_only_its_own_request():
    store = FakeStore(gated=True)

    async def body(batcher):
        blocker, calls = await queue_behind_a_running_batch(store, batcher, "op-0", ["op-1", "bad", "op-2"])
        await blocker
        return await asyncio.gather(*calls, return_exceptions=True)

    good1, bad, good2 = await run_with(store, body)
    assert (good1, good2) == ("chat-of-op-1", "chat-of-op-2")
    assert isinstance(bad, ApiError) and bad.status == 422 and bad.code == "invalid_command"
    assert store.batches[1] == ["op-1", "bad", "op-2"]  # queued together, refused together, then split


class ModelRefusingStore(FakeStore):
    """Refuses any batch holding operator 'bad' as an event model would (a pydantic ValidationError)."""

    def refuse(self, commands) -> None:
        for c in commands:
            if c.operator_id == "bad":
                ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id="", assigned_at=utcnow(), via="pull")


async def test_a_command_an_event_model_refuses_fails_only_its_own_request_with_a_4xx():
    store = ModelRefusingStore(gated=True)

    async def body(batcher):
        blocker, calls = await queue_behind_a_running_batch(store, batcher, "op-0", ["op-1", "bad", "op-2", "op-3"])
        await blocker
        return await asyncio.gather(*calls, return_exceptions=True)

    good1, bad, good2, good3 = await run_with(store, body)
    assert (good1, good2, good3) == ("chat-of-op-1", "chat-of-op-2", "chat-of-op-3")
    assert isinstance(bad, ApiError) and bad.status == 422 and "operator id must not be empty" in bad.message
    # the batch of four failed as a whole once, then each command was applied alone
    assert store.batches[1] == ["op-1", "bad", "op-2", "op-3"]
    assert sorted(map(tuple, store.batches[2:])) == [("bad",), ("op-1",), ("op-2",), ("op-3",)]


async def test_a_conflict_of_one_command_with_the_data_fails_only_that_request_with_409():
    class ConflictStore(FakeStore):
        async def operator_batch(self, commands):
            self.batches.append([c.operator_id for c in commands])
            if any(c.operator_id == "bad" for c in commands):
                raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
            return [f"chat-of-{c.operator_id}" for c in commands], None

    store = ConflictStore()

    async def body(batcher):
        return await asyncio.gather(*(batcher.pull(op) for op in ("op-1", "bad", "op-2")), return_exceptions=True)

    good1, bad, good2 = await run_with(store, body)
    assert (good1, good2) == ("chat-of-op-1", "chat-of-op-2")
    assert isinstance(bad, ApiError) and bad.status == 409


async def test_requests_still_queued_at_shutdown_get_a_retryable_503():
    store = FakeStore(gated=True)  # the gate never opens: op-1's batch is still running at shutdown
    batcher = OperatorBatcher(store, workers=1)
    task = asyncio.create_task(batcher.run())
    running = asyncio.create_task(batcher.pull("op-1"))
    await store.started.wait()
    queued = asyncio.create_task(batcher.pull("op-2"))
    await asyncio.sleep(0)  # one turn of the loop: op-2's command is queued
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(ApiError) as refused:
        await queued
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert store.batches == [["op-1"]]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
