"""Supervised background loops (shared.runtime): restarted through the shared backoff, and named in readiness.

The backoff's sleep and clock are injected; no database or broker is reached (`uses_kafka` off, no pool).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared import metrics, runtime
from shared.retry import Backoff
from shared.settings import Settings

SETTINGS = Settings(auth_secret="unit-test-secret-0123456789abcdef", consumer_stall_s=60)


def make_runtime() -> runtime.Runtime:
    rt = runtime.Runtime(SETTINGS, "unit", "unit", Path("/nonexistent"))
    rt.uses_kafka = False
    return rt


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_wait(_delay: float) -> None:
    await asyncio.sleep(0)


async def until(check, rounds: int = 1000) -> None:
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_a_loop_that_crashes_is_restarted_and_each_restart_is_counted(monkeypatch):
    # A run still going once the loop has turned counts as recovered: no time window to wait out.
    monkeypatch.setattr(runtime, "LOOP_RECOVERED_AFTER_S", 0)
    rt = make_runtime()
    calls = []
    keep_running = asyncio.Event()

    async def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError(f"crash {len(calls)}")
        await keep_running.wait()

    before = metrics.RETRIES.labels("loop unit-flaky")._value.get()
    rt.add_loop("unit-flaky", flaky, backoff=Backoff("loop unit-flaky", base=0.5, cap=30.0, sleep=no_wait))
    await until(lambda: len(calls) == 3)
    assert metrics.RETRIES.labels("loop unit-flaky")._value.get() - before == 2
    await until(lambda: rt._loop_backoffs["unit-flaky"].failing_since is None)  # the third run keeps going
    assert (await rt.readiness())["loop:unit-flaky"] is True
    await rt.stop()
    assert rt._loops[0].done()


async def test_a_loop_that_keeps_crashing_turns_readiness_red_after_the_stall_bound_naming_it():
    rt = make_runtime()
    clock = Clock()
    crashes = []

    async def broken():
        crashes.append(1)
        raise ConnectionError("never works")

    rt.add_loop(
        "unit-broken", broken, backoff=Backoff("loop unit-broken", base=0.5, cap=30.0, sleep=no_wait, clock=clock)
    )
    await until(lambda: len(crashes) >= 3)
    clock.now += SETTINGS.consumer_stall_s - 1
    assert (await rt.readiness())["loop:unit-broken"] is True  # failing, but not for long enough yet
    clock.now += 2
    checks = await rt.readiness()
    assert checks["loop:unit-broken"] is False
    await rt.stop()


async def test_a_loop_whose_task_is_gone_is_not_ready():
    rt = make_runtime()

    async def forever():
        await asyncio.Event().wait()

    rt.add_loop("unit-gone", forever)
    await asyncio.sleep(0)
    assert (await rt.readiness())["loop:unit-gone"] is True
    rt._loops[0].cancel()
    await asyncio.gather(rt._loops[0], return_exceptions=True)
    assert (await rt.readiness())["loop:unit-gone"] is False
    await rt.stop()
