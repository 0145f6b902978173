"""Stopping the load generator's background tasks for certain.

Python 3.11's `asyncio.wait_for` can return its inner result and swallow a cancellation that
arrives just as the inner awaitable completes (CPython gh-86296, fixed in 3.12). A `while True`
loop whose awaits go through `wait_for` (every HTTP request of the bench's client does) then runs
on after `task.cancel()`, and an `await task` after it never returns. That is how the bench hung
with every process idle (docs/performance.md, thirteenth session: the monitor task, found by
listing the hung process's tasks).
"""

from __future__ import annotations

import asyncio
import time

RECANCEL_EVERY_S = 0.5


async def cancel_and_wait(*tasks: asyncio.Task, timeout_s: float = 30.0, every_s: float = RECANCEL_EVERY_S) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again any that is still running
    `every_s` later (its cancellation was swallowed); raise RuntimeError naming those still running
    after `timeout_s`. Their results and errors are dropped (they were being stopped)."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() >= deadline:
            names = ", ".join(sorted(t.get_name() for t in pending))
            raise RuntimeError(f"{len(pending)} task(s) did not stop within {timeout_s:.0f} s: {names}")
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: not reported as "never retrieved" when collected
