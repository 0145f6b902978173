"""The one retry policy (shared.retry): full jitter under a capped exponential ceiling, each retry counted.

The RNG, the sleep and the clock are injected: nothing here really sleeps.
"""

from __future__ import annotations

import random

import pytest

from shared import metrics
from shared.retry import Backoff, retrying


class Recorder:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self):
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def retries_counted(what: str) -> float:
    return metrics.RETRIES.labels(what)._value.get()


def ceilings_seen(base: float, cap: float, n: int) -> list[float]:
    """The upper bounds the backoff hands its RNG, attempt after attempt."""
    bounds: list[float] = []

    def rng(low: float, high: float) -> float:
        assert low == 0.0
        bounds.append(high)
        return high

    backoff = Backoff("unit ceilings", base=base, cap=cap, rng=rng)
    for _ in range(n):
        backoff.next_delay()
    return bounds


def test_the_ceiling_doubles_from_base_and_stops_at_the_cap():
    assert ceilings_seen(0.1, 5.0, 9) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_the_ceiling_never_overflows_after_very_many_failures():
    bounds = ceilings_seen(0.1, 5.0, 2000)
    assert bounds[-1] == 5.0 and max(bounds) == 5.0


def test_every_delay_lies_between_zero_and_the_capped_ceiling_and_they_are_spread_out():
    backoff = Backoff("unit jitter", base=0.1, cap=2.0, rng=random.Random(7).uniform)
    delays = [backoff.next_delay() for _ in range(400)]
    ceilings = [min(2.0, 0.1 * 2**n) for n in range(400)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings))
    capped = delays[10:]  # all under the 2 s cap: full jitter spreads them over the whole range
    assert min(capped) < 0.2 and max(capped) > 1.8
    assert len({round(d, 6) for d in capped}) > 300


async def test_each_wait_counts_one_retry_under_its_name_and_sleeps_the_jittered_delay():
    sleep = Recorder()
    backoff = Backoff("unit counted", base=1.0, cap=8.0, rng=lambda low, high: high / 2, sleep=sleep)
    before = retries_counted("unit counted")
    for _ in range(5):
        await backoff.wait()
    assert retries_counted("unit counted") - before == 5
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 4.0]


async def test_a_success_resets_the_delay_and_the_failing_time():
    now = [100.0]
    sleep = Recorder()
    backoff = Backoff("unit reset", base=1.0, cap=8.0, rng=lambda low, high: high, sleep=sleep, clock=lambda: now[0])
    assert backoff.failing_for() == 0.0
    await backoff.wait()
    now[0] = 130.0
    await backoff.wait()
    assert backoff.failing_for() == 30.0  # since the first failure, not the last
    backoff.reset()
    assert backoff.failing_for() == 0.0
    await backoff.wait()
    assert sleep.delays == [1.0, 2.0, 1.0]


def test_a_base_above_the_cap_is_refused():
    with pytest.raises(ValueError):
        Backoff("unit refused", base=10.0, cap=1.0)


async def test_retrying_returns_the_first_success_and_counts_the_failures_before_it():
    sleep = Recorder()
    outcomes = iter([OSError("down"), OSError("still down"), "connected"])

    async def attempt():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    before = retries_counted("unit retrying")
    backoff = Backoff("unit retrying", base=0.2, cap=5.0, rng=lambda low, high: high, sleep=sleep)
    assert await retrying("unit retrying", attempt, tries=5, backoff=backoff) == "connected"
    assert retries_counted("unit retrying") - before == 2
    assert sleep.delays == pytest.approx([0.2, 0.4])
    assert backoff.failing_for() == 0.0


async def test_retrying_gives_up_after_max_tries_with_the_last_error():
    sleep = Recorder()
    calls = []

    async def attempt():
        calls.append(1)
        raise ConnectionRefusedError(f"refused {len(calls)}")

    backoff = Backoff("unit give up", base=0.2, cap=5.0, sleep=sleep)
    with pytest.raises(ConnectionRefusedError, match="refused 4"):
        await retrying("unit give up", attempt, tries=4, backoff=backoff)
    assert len(calls) == 4 and len(sleep.delays) == 3  # no wait after the last try
