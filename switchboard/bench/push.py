"""Push latency as a user's widget sees it: an operator's reply accepted by ingest -> the event on the
chat's stream (SSE, read with a chat token), for a sample of the half phase's chats.

A chat is sampled when an operator pulls it, at most one every `spread_s / streams` seconds so the
sample covers the phase: operators answer the oldest waiting chats, which at these rates were
started long before (a chat sampled when its user starts it is seldom answered inside the phase).
Its stream is opened then, with a chat token, and the operator sends its reply only once the
stream is open (bounded wait, overlapping its think time): the user's widget has had its stream
open since the chat began, so the reply must be a live push, not a replay. Streams are held until
the watch stops, after the drain. The delivery service's own histogram
(`switchboard_delivery_push_latency_seconds`: a fact's occurred_at -> written to a live stream) is
read from its /metrics at both ends: only these streams are open during the watch, so it covers
the same streams (every live event on them, the users' own messages too).
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

from switchboard.bench.client import Conn, HttpError, http_get
from switchboard.bench.metrics import histogram, histogram_quantile, parse_metrics
from switchboard.bench.quantiles import pct_ms, summary_ms
from switchboard.bench.sse import SseStream
from switchboard.bench.tasks import cancel_and_wait

PUSH_HISTOGRAM = "switchboard_delivery_push_latency_seconds"
APPLY_HISTOGRAM = "switchboard_event_apply_latency_seconds"  # the shared consumer's: occurred_at -> commit


def pair_pushes(
    sent: dict[str, tuple[str, float]],
    arrived: dict[str, float],
    opened: dict[str, float],
    window: tuple[float, float],
) -> dict:
    """Match replies with their arrival on the chat's stream.

    `sent`: reply message_id -> (chat, when ingest accepted it); `arrived`: message_id -> when its
    event was read; `opened`: chat -> when its stream answered 200. Only replies accepted inside
    the window count, and only those accepted after their chat's stream was open (before, the event
    would come as a replay when the stream opens, not as a push). A reply that never arrived is
    `missing`. Returns the latencies (seconds) and those counts.
    """
    a, b = window
    latencies: list[float] = []
    missing = before_open = 0
    for message_id, (chat, accepted) in sent.items():
        if not a <= accepted < b:
            continue
        since = opened.get(chat)
        if since is None or accepted < since:
            before_open += 1
            continue
        got = arrived.get(message_id)
        if got is None:
            missing += 1
        else:
            # The event can be read a moment before the reply's own 202 is (one event loop): 0 then.
            latencies.append(max(0.0, got - accepted))
    return {"latencies": latencies, "missing": missing, "before_open": before_open}


def push_summary(paired: dict) -> dict:
    """count, p50, p90, p95, p99, max in milliseconds, and the replies not counted."""
    lat = paired["latencies"]
    return {
        **summary_ms(lat),
        "p95": pct_ms(lat, 0.95, 3),
        "missing": paired["missing"],
        "accepted_before_stream_open": paired["before_open"],
    }


def histogram_summary(before: dict[float, float], after: dict[float, float]) -> dict:
    """Count and p50/p95/p99 (ms, within Prometheus buckets) of a histogram's growth."""
    out: dict = {"count": int(after.get(float("inf"), 0) - before.get(float("inf"), 0))}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        v = histogram_quantile(q, after, before)
        out[name] = None if v is None else round(v * 1000, 1)
    return out


class PushWatch:
    """The sampled chats' streams, the replies sent to them and when each arrived."""

    def __init__(self, delivery_url: str, frontend_token: str, streams: int, spread_s: float, group: str):
        self.url = delivery_url
        self.group = group  # delivery's consumer group (its apply histogram: the first half of the path)
        self.frontend_token = frontend_token
        self.max_streams = streams
        self.interval = spread_s / max(1, streams)
        self._next_at = 0.0
        self.opened: dict[str, float] = {}
        self.sent: dict[str, tuple[str, float]] = {}
        self.arrived: dict[str, float] = {}
        self.ready: dict[str, asyncio.Event] = {}  # sampled chat -> set once its stream is open (or failed)
        self.failed: dict[str, int] = {}
        self.duplicates = 0
        self.heartbeats = 0
        self._tasks: list[asyncio.Task] = []
        self._streams: list[SseStream] = []
        self._hists_before: dict[str, dict[float, float]] = {}

    async def start(self) -> None:
        """Snapshot the service's histograms."""
        self._hists_before = await self._histograms()

    def want(self, chat_id: str) -> asyncio.Event | None:
        """An operator pulled `chat_id`: follow it if it is sampled already, or the sample has room and
        its turn has come. Returns what the operator waits for before replying (None: not sampled)."""
        if chat_id in self.ready:
            return self.ready[chat_id]
        now = time.monotonic()
        if len(self.ready) >= self.max_streams or now < self._next_at:
            return None
        self._next_at = now + self.interval
        ready = self.ready[chat_id] = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._follow(chat_id, ready)))
        return ready

    def replied(self, chat_id: str, message_id: str, accepted_at: float) -> None:
        """An operator's reply to a chat was accepted (ingest's 202) at `accepted_at`."""
        if chat_id in self.ready:
            self.sent[message_id] = (chat_id, accepted_at)

    async def _follow(self, chat_id: str, ready: asyncio.Event) -> None:
        try:
            token = await self._mint(chat_id)
            stream = SseStream(self.url, f"/v1/chats/{quote(chat_id)}/stream", token)
            await stream.open()
        except HttpError as exc:
            key = str(exc)[:60]
            self.failed[key] = self.failed.get(key, 0) + 1
            return
        finally:
            ready.set()
        self._streams.append(stream)
        self.opened[chat_id] = stream.opened_at
        async for at, event in stream.events():
            # Only the operators' messages are timed: parse no other event.
            if event.event != "message" or '"operator"' not in event.data:
                continue
            data = json.loads(event.data)
            if data.get("sender") != "operator":
                continue
            if data["message_id"] in self.arrived:
                self.duplicates += 1
            else:
                self.arrived[data["message_id"]] = at

    async def _mint(self, chat_id: str) -> str:
        conn = Conn(self.url)
        try:
            status, body = await conn.request("POST", f"/v1/chats/{quote(chat_id)}/token", self.frontend_token)
        finally:
            await conn.close()
        if status != 200:
            raise HttpError(f"chat token answered {status}")
        return json.loads(body)["token"]

    async def _histograms(self) -> dict[str, dict[float, float]]:
        """Delivery's push histogram (chat streams) and its consumer's apply histogram, or {}."""
        try:
            status, data = await http_get(self.url, "/metrics", timeout=5)
        except HttpError:
            return {}
        if status != 200:
            return {}
        samples = parse_metrics(data.decode(), (f"{PUSH_HISTOGRAM}_bucket", f"{APPLY_HISTOGRAM}_bucket"))
        return {
            "push": histogram(samples, PUSH_HISTOGRAM, stream="chat"),
            "apply": histogram(samples, APPLY_HISTOGRAM, group=self.group),
        }

    async def stop(self, window: tuple[float, float], timeout_s: float = 10.0) -> dict:
        """Wait (bounded) for the window's replies to arrive, close the streams, return the figures."""
        deadline = time.monotonic() + timeout_s
        a, b = window
        while time.monotonic() < deadline:
            due = [m for m, (_, t) in self.sent.items() if a <= t < b and m not in self.arrived]
            if not due:
                break
            await asyncio.sleep(0.2)
        hists_after = await self._histograms()
        await cancel_and_wait(*self._tasks)
        for stream in self._streams:
            self.heartbeats += stream.parser.comments
            await stream.close()
        return {
            **push_summary(pair_pushes(self.sent, self.arrived, self.opened, window)),
            "streams_opened": len(self.opened),
            "streams_failed": dict(self.failed),
            "replies_to_sampled_chats": len(self.sent),
            "duplicates": self.duplicates,
            # fact occurred_at (the assigner's record) -> written to these streams, every live event
            "service_histogram_ms": histogram_summary(self._hists_before.get("push", {}), hists_after.get("push", {})),
            # fact occurred_at -> delivery's consumer committed it (every fact of the watch, not only these chats)
            "service_consumer_apply_ms": histogram_summary(
                self._hists_before.get("apply", {}), hists_after.get("apply", {})
            ),
        }
