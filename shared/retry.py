"""The one retry policy: capped exponential backoff with full jitter, each retry counted.

Every loop that retries (consumer polls and batches, the outbox relay, the idle ticker, startup
connections, supervised background loops) waits through a `Backoff`, so they all spread out
after a shared outage instead of hammering Kafka or Postgres in step, and every retry shows in
`switchboard_retries_total{what}`. Our own thirty lines rather than `stamina`: our loops retry
forever and reset on success (stamina wraps one call with a bounded number of attempts), they
must report how long they have been failing (readiness), and tests inject the RNG and the sleep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared import metrics

log = logging.getLogger("switchboard.retry")

T = TypeVar("T")


class Backoff:
    """Delays for consecutive failures: attempt n waits uniform(0, min(cap, base * 2**n)) seconds."""

    def __init__(
        self,
        what: str,
        *,
        base: float = 0.1,
        cap: float = 5.0,
        rng: Callable[[float, float], float] = random.uniform,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap (base={base}, cap={cap})")
        self.what = what
        self.base = base
        self.cap = cap
        self._rng = rng
        self._sleep = sleep
        self._clock = clock
        self.attempt = 0
        self.failing_since: float | None = None
        self._counter = metrics.RETRIES.labels(what)

    def next_delay(self) -> float:
        """The delay before the next retry (full jitter under the capped exponential ceiling)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng(0.0, ceiling)

    async def wait(self) -> float:
        """Count one retry, note since when this loop fails, and sleep the next delay; returns it."""
        if self.failing_since is None:
            self.failing_since = self._clock()
        self._counter.inc()
        delay = self.next_delay()
        await self._sleep(delay)
        return delay

    def reset(self) -> None:
        """A success: the next failure starts again from `base`."""
        self.attempt = 0
        self.failing_since = None

    def failing_for(self) -> float:
        """Seconds since the first failure not followed by a success (0 while succeeding)."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since


async def retrying(
    what: str, attempt: Callable[[], Awaitable[T]], *, tries: int | None = None, backoff: Backoff | None = None
) -> T:
    """Call `attempt` until it succeeds, waiting through `backoff`; re-raise after `tries` failures."""
    backoff = backoff or Backoff(what)
    n = 0
    while True:
        n += 1
        try:
            result = await attempt()
        except Exception as exc:
            if tries is not None and n >= tries:
                raise
            log.warning("not reachable yet, retrying", extra={"what": what, "error": repr(exc), "attempt": n})
            await backoff.wait()
            continue
        backoff.reset()
        return result
