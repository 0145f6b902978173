"""A stream reader's share of the hub's reads (services/delivery/streams.py), without Postgres."""

from __future__ import annotations

import asyncio

from services.delivery import streams


def rows(*seqs: int) -> list[dict]:
    return [{"seq": s} for s in seqs]


def test_a_reader_takes_the_rows_that_continue_after_what_it_sent_skipping_overlaps():
    wake = streams.Wake(after=4)
    wake.events = False
    wake.rows = rows(3, 4, 5, 6) + rows(5, 6, 7)  # two shared reads that overlap, one of them stale
    assert [r["seq"] for r in wake.take()] == [5, 6, 7]
    assert wake.rows == []


def test_a_gap_or_a_request_to_read_the_table_makes_the_reader_read_it_itself():
    wake = streams.Wake(after=4)
    wake.events = False
    wake.rows = rows(5, 7)
    assert wake.take() is None  # 6 is missing: only the table can say why (pruned, or a cut page)
    wake.rows = rows(5)
    wake.events = True  # replay, reconnect, a failed or full shared read
    assert wake.take() is None
    assert (wake.events, wake.rows) == (False, [])
    assert wake.take() == []  # nothing new: nothing sent, nothing read


class FailingStore:
    def __init__(self):
        self.calls = 0

    async def events_after_many(self, streams_, seqs, limit):
        self.calls += 1
        raise ConnectionError("database down")


async def test_a_failed_shared_read_wakes_each_named_stream_to_read_the_table_itself():
    hub = streams.Hub("postgresql://unused")
    store = FailingStore()
    hub.read_with(store)  # type: ignore[arg-type]
    a, b, other = hub.subscribe("chat:a", after=3), hub.subscribe("chat:b"), hub.subscribe("chat:c")
    for w in (a, b, other):
        w.events = False
    hub._on_notify(None, 0, streams.CHANNEL, "chat:a\nchat:b\nchat:unheld")
    await asyncio.wait_for(hub._reading, 5)
    assert store.calls == 1
    assert a.events and a.event.is_set() and b.events and b.event.is_set()
    assert not other.events and not other.event.is_set()


async def test_notifications_arriving_during_a_shared_read_are_read_in_the_next_round():
    hub = streams.Hub("postgresql://unused")
    started, release = asyncio.Event(), asyncio.Event()
    reads: list[tuple[list[str], list[int]]] = []

    class SlowStore:
        async def events_after_many(self, names, seqs, limit):
            reads.append((sorted(names), seqs))
            started.set()
            await release.wait()
            return [{"stream": n, "seq": s + 1} for n, s in zip(names, seqs)]

    hub.read_with(SlowStore())  # type: ignore[arg-type]
    a, b = hub.subscribe("chat:a", after=1), hub.subscribe("chat:b", after=7)
    for w in (a, b):
        w.events = False
    hub._on_notify(None, 0, streams.CHANNEL, "chat:a")
    await started.wait()
    hub._on_notify(None, 0, streams.CHANNEL, "chat:b")
    hub._on_notify(None, 0, streams.CHANNEL, "chat:a")
    release.set()
    await asyncio.wait_for(hub._reading, 5)
    assert [names for names, _ in reads] == [["chat:a"], ["chat:a", "chat:b"]]
    assert [r["seq"] for r in a.take()] == [2]  # read twice, sent once
    assert [r["seq"] for r in b.take()] == [8]
