"""The idle monitor's handlers with fakes: the lifecycle batch handler, counting after commit, ticker health."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from services.idle_monitor import handlers
from services.idle_monitor.store import Applied
from shared.events import ChatAssigned, ChatAssignedPayload, ChatQueued, ChatQueuedPayload
from shared.kafka import Incoming
from shared.settings import Settings

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(auth_secret="unit-test-secret-0123456789abcdef", idle_timeout_s=30, idle_check_interval_s=0.01)


class FakeStore:
    """Records the timer changes it is asked to apply; its pool is never reached."""

    def __init__(self, fail_rounds: int = 0):
        self.changes = []
        self.pool = None
        self.fail_rounds = fail_rounds

    async def apply_changes(self, conn, changes):
        self.changes.append(changes)
        return Applied(armed=len(changes.arm), disarmed=len(changes.disarm))

    async def count_armed(self):
        return 7


def incoming(event) -> Incoming:
    return Incoming(event=event, topic="chat.lifecycle", partition=0, offset=0)


def test_a_lifecycle_batch_arms_through_the_store_and_counts_only_after_commit():
    store = FakeStore()
    apply = handlers.make_apply(store, SETTINGS)
    fact = ChatAssigned(
        event_id=uuid.uuid4(),
        chat_id="c1",
        occurred_at=T0,
        producer="assigner",
        payload=ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id="op1", assigned_at=T0, via="pull"),
    )
    before = handlers.TIMERS_ARMED_TOTAL._value.get()
    applied = asyncio.run(apply(None, [incoming(fact)]))
    assert applied == Applied(armed=1, disarmed=0)
    assert handlers.TIMERS_ARMED_TOTAL._value.get() == before
    handlers.after_commit(applied)
    assert handlers.TIMERS_ARMED_TOTAL._value.get() == before + 1
    assert store.changes[0].arm[0].deadline.timestamp() == T0.timestamp() + 30


def test_a_batch_without_assignment_facts_never_reaches_the_store():
    store = FakeStore()
    queued = ChatQueued(
        event_id=uuid.uuid4(),
        chat_id="c1",
        occurred_at=T0,
        producer="assigner",
        payload=ChatQueuedPayload(reason="new", waiting_since=T0, queued_at=T0),
    )
    applied = asyncio.run(handlers.make_apply(store, SETTINGS)(None, [incoming(queued)]))
    assert applied == Applied(armed=0, disarmed=0)
    assert store.changes == []


class CountingTicker(handlers.Ticker):
    """A ticker whose rounds end as `outcome` says; it counts them and wakes a test waiting for the n-th."""

    def __init__(self, outcome, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcome = outcome
        self.rounds = 0
        self.round_began = asyncio.Event()

    async def fire_due(self) -> int:
        self.rounds += 1
        self.round_began.set()
        return self.outcome()


def failing() -> int:
    """A round that fails as when Postgres or Kafka is down."""
    raise ConnectionError("postgres unreachable")


def quiet() -> int:
    """A round with nothing due."""
    return 0


async def run_until_round(ticker: CountingTicker, n: int) -> None:
    """Run the ticker until its n-th round begins (so every earlier round has ended), then stop it."""
    task = asyncio.create_task(ticker.run())
    try:
        async with asyncio.timeout(30):  # a bound for a broken ticker, not a window the test relies on
            while ticker.rounds < n:
                ticker.round_began.clear()
                await ticker.round_began.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_ticker_whose_rounds_keep_failing_is_counted_and_turns_unhealthy():
    ticker = CountingTicker(failing, FakeStore(), publisher=None, settings=SETTINGS)
    ticker.last_round = time.monotonic() - 3600
    before = handlers.FIRE_FAILURES._value.get()
    asyncio.run(run_until_round(ticker, 3))
    assert handlers.FIRE_FAILURES._value.get() - before >= 2
    assert not ticker.healthy


def test_a_ticker_completing_rounds_is_healthy_and_refreshes_the_armed_gauge():
    ticker = CountingTicker(quiet, FakeStore(), publisher=None, settings=SETTINGS)
    ticker.last_round = time.monotonic() - 3600
    asyncio.run(run_until_round(ticker, 2))
    assert ticker.healthy
    assert handlers.TIMERS_PENDING._value.get() == 7.0
