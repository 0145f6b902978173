"""The load: simulated users and operators against the stack's public interfaces, what they observed,
and the monitor that holds users back while the assigner's backlog is over the cap."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from urllib.parse import quote

from rich.progress import Progress

from shared.auth import issue_token
from shared.events import (
    TOPIC_INBOUND,
    OperatorMessage,
    OperatorMessagePayload,
    UserMessage,
    UserMessagePayload,
    encode,
)
from switchboard.bench.client import Conn, HttpError, http_get
from switchboard.bench.metrics import metric_sum, parse_metrics
from switchboard.bench.options import Options
from switchboard.bench.push import PushWatch
from switchboard.bench.quantiles import pct
from switchboard.bench.stack import Stack

APPLIED = "switchboard_consumer_events_total"  # by group, topic and result: what the monitor reads
STREAM_OPEN_WAIT_S = 2.0  # an operator waits at most this for a sampled chat's stream before replying


async def post_message(conn: Conn, chat_id: str, token: str, body: bytes, errors: dict[str, int]) -> bool:
    """POST a message to ingest; True once it answered 202. A 503 or a lost connection is retried (the
    same message_id: ingest deduplicates), at most four tries; failures are counted in `errors`."""
    for attempt in range(4):
        try:
            status, _ = await conn.request("POST", f"/v1/chats/{quote(chat_id)}/messages", token, body)
        except HttpError:
            errors["ingest_connection"] += 1
            await asyncio.sleep(0.1 * (attempt + 1))
            continue
        if status == 202:
            return True
        errors[f"ingest_{status}"] += 1
        if status != 503:
            return False
        await asyncio.sleep(0.1 * (attempt + 1))
    return False


class Recorder:
    """Everything the load generator observed, per wall-clock second and per message."""

    def __init__(self):
        self.sent_at: dict[str, float] = {}  # user message_id -> frontend hand-over time
        self.path_of: dict[str, str] = {}  # user message_id -> "http" | "kafka"
        self.user_acked: set[str] = set()
        self.user_unconfirmed: set[str] = set()
        self.op_acked: set[str] = set()
        self.op_unconfirmed: set[str] = set()
        self.user_acks_by_s: dict[int, int] = defaultdict(int)
        self.replies_by_s: dict[int, int] = defaultdict(int)
        self.pulls: list[tuple[float, float, str]] = []  # (wall time, seconds, result)
        self.releases: list[tuple[float, float]] = []
        self.replies: list[tuple[float, float]] = []  # operator reply accept latency
        self.accepts: dict[str, list[tuple[float, float]]] = {"http": [], "kafka": []}
        self.errors: dict[str, int] = defaultdict(int)
        self.inbound_acked = 0


class Load:
    """Simulated users and operators against the stack, plus the monitor that gates and shows them."""

    def __init__(self, stack: Stack, opts: Options, run_id: str, rec: Recorder, progress: Progress | None):
        self.stack = stack
        self.opts = opts
        self.run_id = run_id
        self.rec = rec
        self.progress = progress
        self.rng = random.Random(opts.seed)
        s = stack.settings
        self.frontend_token = issue_token(s.auth_secret, "bench-frontend", "frontend")
        self.inbound_topic = s.topic(TOPIC_INBOUND)
        self.group = s.group("assigner")
        self.producer = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = False
        self.rate: float | None = None
        self._next_slot = 0.0
        self.applied_inbound = 0.0
        self.backlog = 0
        self.user_seq: dict[int, int] = defaultdict(int)
        self.push: PushWatch | None = None  # the sampled chats' streams (phase half only)

    async def __aenter__(self):
        if self.opts.direct_kafka or self.opts.reply_via == "kafka":
            from shared.kafka import make_producer

            self.producer = make_producer(self.stack.settings, client_id="switchboard-bench", linger_ms=5)
            await self.producer.start()
        return self

    async def __aexit__(self, *exc):
        if self.producer is not None:
            await self.producer.stop()

    # -- pacing ---------------------------------------------------------------------------------

    async def _pace(self) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
        if self.rate:
            now = time.monotonic()
            self._next_slot = max(self._next_slot + 1.0 / self.rate, now - 0.05)
            if self._next_slot > now:
                await asyncio.sleep(self._next_slot - now)

    # -- users ----------------------------------------------------------------------------------

    async def user(self, i: int, path: str) -> None:
        """One user: writes its next message once the last one was acknowledged (through HTTP or Kafka)."""
        conn = Conn(self.stack.urls["ingest"]) if path == "http" else None
        think = self.opts.user_think_ms / 1000
        try:
            while self.running:
                await self._pace()
                if not self.running:
                    break
                n = self.user_seq[i]
                self.user_seq[i] += 1
                chat_id = f"b{self.run_id}-u{i}-c{n // self.opts.messages_per_chat}"
                message_id = f"b{self.run_id}-u{i}-m{n}"
                await self._send_user(conn, path, chat_id, message_id)
                if think:
                    await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
                else:
                    await asyncio.sleep(0)
        finally:
            if conn:
                await conn.close()

    async def _send_user(self, conn: Conn | None, path: str, chat_id: str, message_id: str) -> None:
        rec = self.rec
        started = time.time()
        rec.sent_at[message_id] = started
        rec.path_of[message_id] = path
        ok = False
        if path == "http":
            body = json.dumps({"message_id": message_id, "sender": "user", "text": "hello, I need help"}).encode()
            ok = await self._post_ingest(conn, chat_id, body)
        else:
            occurred = datetime.fromtimestamp(started, UTC)
            event = UserMessage(
                event_id=uuid.uuid4(),
                chat_id=chat_id,
                occurred_at=occurred,
                producer="bench",
                payload=UserMessagePayload(message_id=message_id, text="hello, I need help"),
            )
            ok = await self._produce(chat_id, encode(event))
        done = time.time()
        if ok:
            rec.user_acked.add(message_id)
            rec.user_acks_by_s[int(done)] += 1
            rec.accepts[path].append((started, done - started))
            rec.inbound_acked += 1
        else:
            rec.user_unconfirmed.add(message_id)

    async def _post_ingest(self, conn: Conn, chat_id: str, body: bytes) -> bool:
        return await post_message(conn, chat_id, self.frontend_token, body, self.rec.errors)

    async def _produce(self, chat_id: str, value: bytes) -> bool:
        try:
            fut = await self.producer.send(self.inbound_topic, value=value, key=chat_id.encode())
            await fut
            return True
        except Exception as exc:
            self.rec.errors[f"kafka_{type(exc).__name__}"] += 1
            return False

    # -- operators ------------------------------------------------------------------------------

    async def operator(self, j: int, prefix: str = "bench-op", scale: bool = False) -> None:
        """One operator: pulls, thinks, then replies or releases (the scale check always releases)."""
        me = f"{prefix}-{j}"
        token = issue_token(self.stack.settings.auth_secret, me, "operator")
        conn = Conn(self.stack.urls["assigner"])
        ingest = Conn(self.stack.urls["ingest"]) if self.opts.reply_via == "ingest" else None
        handled: set[str] = set()
        think = (self.opts.scale_think_ms if scale else self.opts.operator_think_ms) / 1000
        wait = 0.05  # back-off while nothing is waiting or our reply is not applied yet (no busy polling)
        try:
            while self.running:
                t0 = time.time()
                try:
                    status, data = await conn.request("POST", "/v1/assignments/next", token)
                except HttpError:
                    self.rec.errors["pull_connection"] += 1
                    await asyncio.sleep(0.2)
                    continue
                dt = time.time() - t0
                if status == 204:
                    self.rec.pulls.append((t0, dt, "empty"))
                    await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
                    wait = min(wait * 2, 0.8)
                    continue
                if status != 200:
                    self.rec.errors[f"pull_{status}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                body = json.loads(data)
                aid, chat_id = body["assignment_id"], body["chat"]["chat_id"]
                if aid in handled:
                    # Our reply is accepted but not applied yet: the assigner still shows the assignment.
                    self.rec.pulls.append((t0, dt, "current"))
                    await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
                    wait = min(wait * 2, 0.8)
                    continue
                wait = 0.05
                self.rec.pulls.append((t0, dt, "assigned"))
                handled.add(aid)
                if len(handled) > 64:
                    handled = {aid}
                # A sampled chat's stream is opened now; the reply waits until it is (push.py).
                stream_open = self.push.want(chat_id) if self.push is not None and not scale else None
                if think:
                    await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
                if stream_open is not None and not stream_open.is_set():
                    try:
                        await asyncio.wait_for(stream_open.wait(), STREAM_OPEN_WAIT_S)
                    except TimeoutError:
                        self.rec.errors["push_stream_open_timeout"] += 1
                if scale or self.rng.random() < self.opts.release_share:
                    t1 = time.time()
                    try:
                        status, _ = await conn.request("POST", f"/v1/assignments/{aid}/release", token)
                    except HttpError:
                        self.rec.errors["release_connection"] += 1
                        continue
                    self.rec.releases.append((t1, time.time() - t1))
                    if status != 200:
                        self.rec.errors[f"release_{status}"] += 1
                else:
                    await self._reply(ingest, me, chat_id)
        finally:
            await conn.close()
            if ingest:
                await ingest.close()

    async def _reply(self, ingest: Conn | None, me: str, chat_id: str) -> None:
        message_id = f"b{self.run_id}-{me}-r{uuid.uuid4().hex[:10]}"
        t1 = time.time()
        if ingest is not None:
            body = json.dumps(
                {
                    "message_id": message_id,
                    "sender": "operator",
                    "operator_id": me,
                    "text": "Thanks, let me look into that.",
                }
            ).encode()
            ok = await self._post_ingest(ingest, chat_id, body)
        else:
            event = OperatorMessage(
                event_id=uuid.uuid4(),
                chat_id=chat_id,
                occurred_at=datetime.fromtimestamp(t1, UTC),
                producer="bench",
                payload=OperatorMessagePayload(
                    message_id=message_id, operator_id=me, text="Thanks, let me look into that."
                ),
            )
            ok = await self._produce(chat_id, encode(event))
        done = time.time()
        if ok:
            self.rec.op_acked.add(message_id)
            self.rec.replies.append((t1, done - t1))
            self.rec.replies_by_s[int(done)] += 1
            if self.push is not None:
                self.push.replied(chat_id, message_id, done)
            self.rec.inbound_acked += 1
        else:
            self.rec.op_unconfirmed.add(message_id)

    # -- monitor --------------------------------------------------------------------------------

    async def scrape(self, names: tuple[str, ...] = ()) -> list | None:
        """The assigner's metrics (all, or the samples named): its API process and, apart, its worker's."""
        samples = []
        for name in ("assigner", "assigner_worker"):
            if name not in self.stack.urls:
                continue
            try:
                status, data = await http_get(self.stack.urls[name], "/metrics", timeout=5)
            except HttpError:
                return None
            if status != 200:
                return None
            samples += parse_metrics(data.decode(), names)
        return samples

    async def monitor(self) -> None:
        """Every 0.5 s: the assigner's applied inbound events, the backlog, and the users' gate."""
        while True:
            samples = await self.scrape(names=(APPLIED,))
            if samples is not None:
                self.applied_inbound = metric_sum(
                    samples, APPLIED, group=self.group, topic=TOPIC_INBOUND, result="applied"
                )
                self.backlog = max(0, int(self.rec.inbound_acked - self.applied_inbound))
                if self.backlog > self.opts.backlog_cap:
                    self.gate.clear()
                else:
                    self.gate.set()
            await asyncio.sleep(0.5)

    def live_line(self) -> str:
        """The last three seconds in one line of the progress display."""
        now = time.time()
        acks = sum(self.rec.user_acks_by_s.get(int(now) - k, 0) for k in range(1, 4)) / 3
        turns = sum(self.rec.replies_by_s.get(int(now) - k, 0) for k in range(1, 4)) / 3
        recent = [p[1] for p in self.rec.pulls[-400:] if p[0] > now - 3]
        p99 = pct(recent, 0.99)
        return (
            f"user msgs/s {acks:,.0f} │ turns/s {turns:,.0f} │ pull p99 "
            f"{'-' if p99 is None else f'{p99 * 1000:.0f} ms'} │ backlog {self.backlog:,}"
        )

    # -- phases ---------------------------------------------------------------------------------

    async def run_phase(self, label: str, seconds: float, rate: float | None, task_id=None, on_tick=None) -> None:
        """Run users and operators for `seconds`; the caller owns the progress task."""
        self.rate = rate
        self._next_slot = time.monotonic()
        self.running = True
        self.gate.set()
        n_http = self.opts.users if not self.opts.direct_kafka else min(self.opts.http_users, self.opts.users)
        actors = [asyncio.create_task(self.user(i, "http" if i < n_http else "kafka")) for i in range(self.opts.users)]
        actors += [asyncio.create_task(self.operator(j)) for j in range(self.opts.operators)]
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                if self.progress is not None and task_id is not None:
                    self.progress.update(
                        task_id, completed=min(elapsed, seconds), description=f"{label:<10} {self.live_line()}"
                    )
                if on_tick:
                    on_tick(elapsed)
                await asyncio.sleep(0.25)
        finally:
            self.running = False
            self.gate.set()
            await asyncio.gather(*actors, return_exceptions=True)
            if self.progress is not None and task_id is not None:
                self.progress.update(task_id, completed=seconds)
