"""Every instance's streams: a LISTEN connection that wakes the streams of a chat, and the stream loop.

A consumer instance that stores stream events sends `NOTIFY delivery_stream, '<stream key>\n...'`
(the poll's streams, one payload as long as they fit) in the same transaction, so Postgres delivers
it to every instance's listener only after the commit. A stream never takes events from the
notification itself: it registers its wake-up first, then reads the table after the last sequence it
sent, then waits to be woken. Replay and live delivery are the same read, so there is no gap between
them and no duplicate. When the listener (re)connects it wakes every stream: notifications sent while
it was away are not lost.

One read per notification, not one per stream: once the hub has a store (`Hub.read_with`), a
notification makes it read the new events of every local stream it names in one statement (each
stream after the lowest position of its readers) and hand each reader its rows. A reader takes
them only where they continue exactly after the last sequence it sent; anything else (a gap, a
full page, a failed read, a reconnect) makes it read the table itself, as before. Either way the
rows are the table's, read after the commit that notified: the same no-gap, no-duplicate read.

Queue depth works the other way round: the consumer's NOTIFY `delivery_queue_depth` carries the new
counts (`[[queue, waiting, version], ...]`), the hub keeps the latest of each queue (a higher version
wins) and wakes the operator streams of that queue, which send it without a query, at most once a
second per queue (`domain.depth_updates`). The hub loads every count when its listener (re)connects,
after LISTEN, so nothing committed in between is missed. Depth events carry no `id`: they are not
part of the stream's replay, and a reconnecting stream starts with the current depths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

import asyncpg
from prometheus_client import Counter, Gauge, Histogram
from sse_starlette import ServerSentEvent

from services.delivery import domain
from services.delivery.store import PAGE, QUERIES, Store
from shared.events import utcnow

log = logging.getLogger("switchboard.delivery")

CHANNEL = "delivery_stream"
DEPTH_CHANNEL = "delivery_queue_depth"

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
STREAM_READS = Counter(
    "switchboard_delivery_stream_reads_total",
    "Reads of the stream events table: one shared by the streams a notification names, or one stream's own.",
    ["read"],
)


class Wake:
    """A stream's wake-up: set when its events or one of its queues' depth changed (the flags say which)."""

    def __init__(self, after: int = 0) -> None:
        self.event = asyncio.Event()
        self.events = True  # read the stream's table (first: the replay)
        self.depth = True  # look at the queues' depth (first: the current depths)
        self.after = after  # the last sequence the reader sent: the hub's shared reads start after it
        self.rows: list = []  # rows the hub read for this reader, in read order (they may overlap)

    def take(self) -> list | None:
        """The hub's rows that continue after `after`, in order; None when the table must be read instead.

        Rows at or before `after` were sent already (a read that overlapped an earlier one); a row
        past `after + 1` means a gap the hub's read could not fill (or a page it cut): read the table.
        """
        rows, self.rows = self.rows, []
        if self.events:
            self.events = False
            return None
        out: list = []
        nxt = self.after + 1
        for row in rows:
            seq = row["seq"]
            if seq < nxt:
                continue
            if seq > nxt:
                return None
            out.append(row)
            nxt += 1
        return out


class Hub:
    """Wake-ups per stream and per queue for the streams this process holds, fed by a Postgres LISTEN connection."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.store: Store | None = None  # with one, a notification's streams are read once for all (`read_with`)
        self._pending: set[str] = set()
        self._reading: asyncio.Task | None = None
        self._waiters: dict[str, set[Wake]] = defaultdict(set)
        self._queue_waiters: dict[str, set[Wake]] = defaultdict(set)
        self.connected = asyncio.Event()
        # Each queue's waiting count as of its version; complete once `depths_loaded` (after a (re)connect).
        self._depths: dict[str, tuple[int, int]] = {}
        self.depths_loaded = False

    def read_with(self, store: Store) -> None:
        """Read the new events of the streams a notification names in one statement, through `store`."""
        self.store = store

    def subscribe(self, stream: str, queues: Sequence[str] = (), after: int = 0) -> Wake:
        """A wake-up for a stream's new events and its queues' depth changes; call `unsubscribe` when done."""
        wake = Wake(after)
        self._waiters[stream].add(wake)
        for q in queues:
            self._queue_waiters[q].add(wake)
        return wake

    def requeue(self, wake: Wake, old: Sequence[str], new: Sequence[str]) -> None:
        """Move a reader's depth wake-ups from the queues `old` to `new` (its operator's profile changed)."""
        for q in set(old) - set(new):
            waiters = self._queue_waiters.get(q)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._queue_waiters[q]
        for q in new:
            self._queue_waiters[q].add(wake)
        wake.depth = True

    def unsubscribe(self, stream: str, wake: Wake, queues: Sequence[str] = ()) -> None:
        """Forget a reader's wake-up."""
        for table, key in ((self._waiters, stream), *((self._queue_waiters, q) for q in queues)):
            waiters = table.get(key)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del table[key]

    def wake(self, stream: str) -> None:
        """Wake every local reader of a stream."""
        for w in self._waiters.get(stream, ()):
            w.events = True
            w.event.set()

    def wake_all(self) -> None:
        """Wake every local stream (after the listener reconnected: notifications may have been missed)."""
        for waiters in self._waiters.values():
            for w in waiters:
                w.events = w.depth = True
                w.event.set()

    def depth(self, queue: str) -> int:
        """A queue's waiting count (a queue without one has no chat waiting)."""
        held = self._depths.get(queue)
        return 0 if held is None else held[0]

    def set_depths(self, counts: Sequence[tuple[str, int, int]]) -> None:
        """Take (queue, waiting, version) counts, each only if newer than the one held; wake the queues' streams."""
        for queue, waiting, version in counts:
            held = self._depths.get(queue)
            if held is not None and held[1] >= version:
                continue
            self._depths[queue] = (waiting, version)
            for w in self._queue_waiters.get(queue, ()):
                if not w.depth:  # already flagged: the stream holds it back until its next second is due
                    w.depth = True
                    w.event.set()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        if self.store is None:
            for stream in payload.split("\n"):
                self.wake(stream)
            return
        self._pending.update(s for s in payload.split("\n") if s in self._waiters)
        if self._pending and (self._reading is None or self._reading.done()):
            self._reading = asyncio.get_running_loop().create_task(self._read_pending(), name="delivery-stream-read")

    async def _read_pending(self) -> None:
        """Read the notified streams' new events in one statement per round and hand them to their readers.

        Notifications arriving during a read are gathered into the next round. A failed read wakes
        the streams to read the table themselves.
        """
        assert self.store is not None
        while self._pending:
            streams = [s for s in self._pending if s in self._waiters]
            self._pending.clear()
            if not streams:
                continue
            afters = [min(w.after for w in self._waiters[s]) for s in streams]
            try:
                rows = await self.store.events_after_many(streams, afters, PAGE)
                STREAM_READS.labels("shared").inc()
            except Exception as exc:
                log.warning("shared stream read failed; each stream reads itself", extra={"error": repr(exc)})
                for stream in streams:
                    self.wake(stream)
                continue
            by_stream: dict[str, list] = defaultdict(list)
            for row in rows:
                by_stream[row["stream"]].append(row)
            for stream in streams:
                found = by_stream.get(stream, [])
                for w in self._waiters.get(stream, ()):
                    if len(found) >= PAGE:  # more may follow: the reader pages through the table itself
                        w.events = True
                    else:
                        w.rows.extend(found)
                    w.event.set()

    def _on_depth(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            self.set_depths([(str(q), int(n), int(v)) for q, n, v in json.loads(payload)])
        except (ValueError, TypeError) as exc:  # not ours to crash the listener over; the next load repairs it
            log.warning("queue depth notification not understood", extra={"error": repr(exc)})

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
                await conn.add_listener(DEPTH_CHANNEL, self._on_depth)
                # After LISTEN: a count committed since comes by notification, with a higher version.
                self.set_depths(
                    [(r["queue_id"], r["waiting"], r["version"]) for r in await conn.fetch(QUERIES.queue_depths)]
                )
                self.depths_loaded = True
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
    hub: Hub, store: Store, stream: str, after: int, until: float | None = None, queues: Sequence[str] = ()
) -> AsyncIterator[ServerSentEvent]:
    """A stream's events after sequence `after`: the stored ones, then each new one as it commits.

    The stream ends at `until` (Unix time: the token's expiry), so a reader must come back with a
    valid token; it resumes with Last-Event-ID. A resume point older than the replay window starts
    with a `gap` event (no id) naming the first sequence still there. With `queues` (an operator's),
    it also sends `queue_depth` events (no id): each queue's current depth once the replay is sent,
    then each change, at most once a second per queue; a `profile` event (the operator's queues
    changed) moves it to the new queues.
    """
    kind = stream.partition(":")[0]  # chat | operator: the metrics' label
    wake = hub.subscribe(stream, queues, after)
    OPEN_STREAMS.labels(kind).inc()
    replaying = True
    sent: dict[str, int] = {}
    sent_at: dict[str, float] = {}
    try:
        while until is None or time.time() < until:
            wake.event.clear()
            if wake.events or wake.rows:
                rows = wake.take()
                own = rows is None
                if rows is None:
                    rows = await store.events_after(stream, after)
                    STREAM_READS.labels("own").inc()
                now = utcnow()
                if replaying and after > 0 and rows and rows[0]["seq"] > after + 1:
                    yield ServerSentEvent(
                        data=json.dumps({"type": "gap", "after": after, "resumes_at": rows[0]["seq"]}), event="gap"
                    )
                for row in rows:
                    after = row["seq"]
                    if row["type"] == "profile" and queues:  # the operator's queues changed: follow them
                        new = tuple(json.loads(row["data"])["queues"])
                        hub.requeue(wake, queues, new)
                        for gone in set(queues) - set(new):
                            sent.pop(gone, None)
                            sent_at.pop(gone, None)
                        queues = new
                    wake.after = after
                    EVENTS_PUSHED.labels(kind, row["type"]).inc()
                    if not replaying:
                        PUSH_LATENCY.labels(kind).observe(max(0.0, (now - row["occurred_at"]).total_seconds()))
                    yield ServerSentEvent(data=row["data"], event=row["type"], id=str(row["seq"]))
                if own and len(rows) == PAGE:
                    wake.events = True
                    continue
                replaying = False
            wait = None if until is None else max(0.0, until - time.time())
            if queues and wake.depth and hub.depths_loaded:
                clock = time.monotonic()
                send, due = domain.depth_updates(queues, {q: hub.depth(q) for q in queues}, sent, sent_at, clock)
                for queue, waiting in send.items():
                    sent[queue], sent_at[queue] = waiting, clock
                    EVENTS_PUSHED.labels(kind, "queue_depth").inc()
                    yield ServerSentEvent(
                        data=json.dumps({"type": "queue_depth", "queue_id": queue, "waiting": waiting}),
                        event="queue_depth",
                    )
                if due is None:
                    wake.depth = False
                else:  # held back: stays flagged (no wake-up per change meanwhile), looked at again when due
                    wait = max(0.0, due - clock) if wait is None else min(wait, max(0.0, due - clock))
            try:
                await asyncio.wait_for(wake.event.wait(), wait)
            except TimeoutError:
                continue  # a held-back depth is due, or the token expired (the loop's condition)
    finally:
        OPEN_STREAMS.labels(kind).dec()
        hub.unsubscribe(stream, wake, queues)
