"""The bench stops its background tasks even when one swallows a cancellation (Python 3.11's wait_for)."""

import asyncio

import pytest

from switchboard.bench.tasks import cancel_and_wait


def looping(swallow: int):
    """A monitor-like loop that survives its first `swallow` cancellations, as one whose cancel
    landed inside wait_for's race does; (the coroutine, its count of loop turns; a negative count ends it)."""
    turns = [0]

    async def loop():
        swallowed = 0
        while turns[0] >= 0:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed >= swallow:
                    raise
                swallowed += 1
            turns[0] += 1

    return loop(), turns


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again_until_it_ends():
    coro, _ = looping(swallow=1)
    task = asyncio.create_task(coro)
    await asyncio.sleep(0.05)
    # What the bench did before: cancel once, then wait. The loop runs on.
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done
    await cancel_and_wait(task, every_s=0.05, timeout_s=5)
    assert task.cancelled()


async def test_a_task_that_ends_on_the_first_cancellation_and_one_already_ended_stop_at_once():
    first, _ = looping(swallow=0)
    running = asyncio.create_task(first)
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.02)
    await cancel_and_wait(running, finished, every_s=1, timeout_s=5)
    assert running.cancelled() and finished.done() and not finished.cancelled()


async def test_a_task_that_never_stops_is_named_in_an_error_after_the_timeout():
    coro, turns = looping(swallow=10**9)
    task = asyncio.create_task(coro, name="stubborn-monitor")
    await asyncio.sleep(0.02)  # inside its loop (a task cancelled before it first runs never starts)
    with pytest.raises(RuntimeError, match="stubborn-monitor"):
        await cancel_and_wait(task, every_s=0.02, timeout_s=0.2)
    assert turns[0] > 0 and not task.done()
    turns[0] = -(10**9)  # its own way out, so the test leaves nothing running
    await asyncio.wait({task}, timeout=5)
    assert task.done()
