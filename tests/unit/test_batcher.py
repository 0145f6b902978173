"""The shared request batcher: batches of what queued, each caller its own answer, 503 at shutdown."""

import asyncio

import pytest

from shared.batcher import Batcher
from shared.errors import ApiError


class Recorder:
    """Applies a batch of numbers: doubles them, refuses negatives (for that caller only); waits on a gate."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def apply(self, numbers: list[int]):
        self.batches.append(list(numbers))
        self.entered.set()
        await self.gate.wait()
        if 0 in numbers:
            raise RuntimeError("zero breaks the whole batch")
        return [ValueError(f"{n} is negative") if n < 0 else 2 * n for n in numbers]


async def test_what_queues_while_a_batch_runs_goes_into_the_next_and_each_caller_gets_its_own_answer():
    rec = Recorder()
    batcher = Batcher(rec.apply, max_batch=3, stopping="the test")
    batcher.start()
    rec.gate.clear()
    first = asyncio.create_task(batcher.submit(1))
    await rec.entered.wait()
    rest = [asyncio.create_task(batcher.submit(n)) for n in (2, -3, 4, 5)]
    await asyncio.sleep(0)
    rec.gate.set()
    answers = await asyncio.gather(first, *rest, return_exceptions=True)
    assert answers[:2] == [2, 4] and answers[3:] == [8, 10]
    assert isinstance(answers[2], ValueError)
    assert rec.batches == [[1], [2, -3, 4], [5]]  # bounded by max_batch
    await batcher.stop()


async def test_a_batch_that_fails_as_a_whole_fails_every_caller_of_that_batch_only():
    rec = Recorder()
    batcher = Batcher(rec.apply, max_batch=10)
    batcher.start()
    rec.gate.clear()
    blocker = asyncio.create_task(batcher.submit(7))
    await rec.entered.wait()
    doomed = [asyncio.create_task(batcher.submit(n)) for n in (0, 1)]
    await asyncio.sleep(0)
    rec.gate.set()
    assert await blocker == 14
    for task in doomed:
        with pytest.raises(RuntimeError, match="zero"):
            await task
    assert await batcher.submit(3) == 6
    await batcher.stop()


async def test_stop_applies_what_is_queued_then_answers_later_requests_503():
    rec = Recorder()
    batcher = Batcher(rec.apply, max_batch=1, stopping="the test")
    batcher.start()
    calls = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert [c.result() for c in calls] == [2, 4, 6]
    with pytest.raises(ApiError) as refused:
        await batcher.submit(4)
    assert refused.value.status == 503 and refused.value.code == "shutting_down"
    assert refused.value.headers["Retry-After"] == "1" and "the test is stopping" in refused.value.message


async def test_requests_still_queued_when_the_workers_are_cancelled_get_a_retryable_503():
    rec = Recorder()
    batcher = Batcher(rec.apply, max_batch=1)
    task = asyncio.create_task(batcher.run())
    rec.gate.clear()
    running = asyncio.create_task(batcher.submit(1))
    await rec.entered.wait()
    queued = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(ApiError) as refused:
        await queued
    assert refused.value.status == 503
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
