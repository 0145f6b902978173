"""Every instance's chat streams: a LISTEN connection that wakes the streams of a chat, and the stream loop.

A consumer instance that stores stream events sends `NOTIFY delivery_stream, '<stream key>'` in the
same transaction, so Postgres delivers it to every instance's listener only after the commit.
A stream never takes events from the notification itself: it registers its wake-up first, then
reads the table after the last sequence it sent, then waits to be woken. Replay and live delivery
are the same read, so there is no gap between them and no duplicate. When the listener
(re)connects it wakes every stream: notifications sent while it was away are not lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
from prometheus_client import Counter, Gauge, Histogram
from sse_starlette import ServerSentEvent

from services.delivery.store import PAGE, Store
from shared.events import utcnow

log = logging.getLogger("switchboard.delivery")

CHANNEL = "delivery_stream"

OPEN_STREAMS = Gauge("switchboard_delivery_open_streams", "SSE streams this instance holds open.", ["stream"])
EVENTS_PUSHED = Counter(
    "switchboard_delivery_events_pushed_total", "Events written to SSE streams.", ["stream", "type"]
)
PUSH_LATENCY = Histogram(
    "switchboard_delivery_push_latency_seconds",
    "From a fact's occurred_at to its event written to a live stream (replayed events not counted).",
    ["stream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LISTENER_UP = Gauge("switchboard_delivery_listener_up", "1 while the LISTEN connection is open.")


class Hub:
    """Wake-ups per chat for the streams this process holds, fed by a Postgres LISTEN connection."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.connected = asyncio.Event()

    def subscribe(self, stream: str) -> asyncio.Event:
        """A wake-up event set whenever the stream has new events; call `unsubscribe` when done."""
        event = asyncio.Event()
        self._waiters[stream].add(event)
        return event

    def unsubscribe(self, stream: str, event: asyncio.Event) -> None:
        """Forget a reader's wake-up."""
        waiters = self._waiters.get(stream)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[stream]

    def wake(self, stream: str) -> None:
        """Wake every local reader of a stream."""
        for event in self._waiters.get(stream, ()):
            event.set()

    def wake_all(self) -> None:
        """Wake every local stream (after the listener reconnected: notifications may have been missed)."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        self.wake(payload)

    async def listen(self) -> None:
        """Hold a LISTEN connection until cancelled; reconnects (and wakes every stream) after a failure."""
        delay = 0.2
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.database_url, server_settings={"application_name": "delivery-listen"})
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                LISTENER_UP.set(1)
                self.wake_all()
                delay = 0.2
                while not closed.is_set():
                    try:  # a half-open TCP connection raises nothing on its own: probe it
                        await asyncio.wait_for(closed.wait(), 10)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stream listener lost, reconnecting", extra={"error": repr(exc)})
            finally:
                self.connected.clear()
                LISTENER_UP.set(0)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


async def stream_events(
    hub: Hub, store: Store, stream: str, after: int, until: float | None = None
) -> AsyncIterator[ServerSentEvent]:
    """A stream's events after sequence `after`: the stored ones, then each new one as it commits.

    The stream ends at `until` (Unix time: the token's expiry), so a reader must come back with a
    valid token; it resumes with Last-Event-ID. A resume point older than the replay window starts
    with a `gap` event (no id) naming the first sequence still there.
    """
    kind = stream.partition(":")[0]  # chat | operator: the metrics' label
    wake = hub.subscribe(stream)
    OPEN_STREAMS.labels(kind).inc()
    replaying = True
    try:
        while until is None or time.time() < until:
            wake.clear()
            rows = await store.events_after(stream, after)
            now = utcnow()
            if replaying and after > 0 and rows and rows[0]["seq"] > after + 1:
                yield ServerSentEvent(
                    data=json.dumps({"type": "gap", "after": after, "resumes_at": rows[0]["seq"]}), event="gap"
                )
            for row in rows:
                after = row["seq"]
                EVENTS_PUSHED.labels(kind, row["type"]).inc()
                if not replaying:
                    PUSH_LATENCY.labels(kind).observe(max(0.0, (now - row["occurred_at"]).total_seconds()))
                yield ServerSentEvent(data=row["data"], event=row["type"], id=str(row["seq"]))
            if len(rows) == PAGE:
                continue
            replaying = False
            try:
                await asyncio.wait_for(wake.wait(), None if until is None else max(0.0, until - time.time()))
            except TimeoutError:
                return
    finally:
        OPEN_STREAMS.labels(kind).dec()
        hub.unsubscribe(stream, wake)
