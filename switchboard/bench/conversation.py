"""The conversation phase: every user and every operator over HTTP, as real frontends and operators are,
closed loop.

A *user* is a chat widget. For each chat it gets a chat token (`POST /v1/chats/{id}/token` on delivery,
as the site's backend does), opens the chat's stream with it (`GET /v1/chats/{id}/stream`, SSE), then
for each turn posts `messages_per_turn` user messages through ingest with that token (each once the
previous one was acknowledged, plus `user_think_ms`) and waits until an operator's reply is read on the
stream after its last message was acknowledged; then the next turn. After `turns_per_chat` turns it
opens a new chat. A reply that does not come within REPLY_WAIT_S ends the chat (counted).

Replies are read from the chat stream, not by polling the chat over HTTP: it is what a widget does
(`GET /v1/chats/{id}` is for the assigned operator or an admin, not a user), it costs one open
connection per user and one event read per message instead of a request per poll, and a poll's
interval would put its own delay into every turn.

An *operator* is a console: it holds its operator stream open (`GET /v1/operators/me/stream` on
delivery: new messages on the chats it holds), pulls (`POST /v1/assignments/next` with its operator
token), and answers once the user has finished the turn: when the chat's user messages since the last
reply (those in the pull's answer, then those read on its stream) number `messages_per_turn` (or
after OPERATOR_WAIT_S, counted), it thinks (`operator_think_ms`) and replies through ingest with the
same token. Without that wait an operator would answer a user's first message while the user is
still typing the second, and the mix would not be the one asked for. The stream's message events
carry no chat id: the bench's user message ids start with their chat's id. While its reply is not
applied a pull returns the same assignment (`current`): it backs off then, and when nothing is
waiting (`empty`), as in the load phases (50 ms doubling to 800 ms).

A turn is an assignment ended as `answered` (an operator's reply applied), counted from
`assigner.assignments` like the load phases' turns. What the clients observed is kept here; the
figures are made in conversation_report.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import asyncpg
from rich.progress import Progress

from shared.auth import issue_token
from switchboard.bench.checks import load_messages, wait_drained
from switchboard.bench.client import Conn, HttpError
from switchboard.bench.conversation_report import summarize
from switchboard.bench.load import Recorder, post_message
from switchboard.bench.options import Options
from switchboard.bench.profiling import collect_profiles, start_profiles
from switchboard.bench.quantiles import pct
from switchboard.bench.sse import SseStream
from switchboard.bench.stack import Stack
from switchboard.bench.tasks import cancel_and_wait

REPLY_WAIT_S = 15.0  # a user whose reply has not come after this long gives the chat up (counted)
OPERATOR_WAIT_S = 5.0  # an operator waits at most this for the rest of a turn's user messages (counted)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 0.8  # an operator's pause after an empty or `current` pull, doubling
PROFILED = ("assigner", "assigner_worker", "assigner_relay", "ingest", "idle_monitor", "stats", "delivery")
USER_TEXT = "hello, I need help"
REPLY_TEXT = "Thanks, let me look into that."


class Observed:
    """What the conversation's clients saw, each with its wall-clock start."""

    def __init__(self):
        self.ingest: list[tuple[float, float, str]] = []  # (start, seconds to 202, "user" | "operator")
        self.pulls: list[tuple[float, float, str]] = []  # (start, seconds, "assigned" | "current" | "empty")
        self.turns: list[tuple[float, float]] = []  # (reply read, seconds since the turn's last user ack)
        self.chats_opened = 0
        self.reply_timeouts = 0
        self.operator_wait_timeouts = 0
        self.errors: dict[str, int] = defaultdict(int)


class Replies:
    """The operators' replies read on one chat's stream: when the last one came."""

    def __init__(self):
        self.last_at = 0.0
        self.changed = asyncio.Event()

    def seen(self, at: float) -> None:
        self.last_at = at
        self.changed.set()

    async def after(self, since: float, timeout_s: float, running) -> float | None:
        """When the first reply read at or after `since` came; None on timeout or when the phase ends."""
        deadline = time.monotonic() + timeout_s
        while self.last_at < since:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not running():
                return None
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return None
        return self.last_at


class Inbox:
    """The user messages an operator read on its operator stream, by chat (from the message id)."""

    def __init__(self):
        self.by_chat: dict[str, set[str]] = defaultdict(set)
        self.changed = asyncio.Event()

    def seen(self, message_id: str) -> None:
        self.by_chat[message_id.rpartition("-m")[0]].add(message_id)
        self.changed.set()

    async def wait_for(self, chat_id: str, known: set[str], count: int, timeout_s: float, running) -> bool:
        """True once `known` and the chat's messages read on the stream number `count` (False: timeout)."""
        deadline = time.monotonic() + timeout_s
        while len(known | self.by_chat.get(chat_id, set())) < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not running():
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return False
        return True


def unanswered_user_messages(messages: list[dict]) -> set[str]:
    """The ids of a chat's user messages after its last operator message (a pull's `chat.messages`)."""
    out: set[str] = set()
    for m in messages:
        if m.get("sender") == "operator":
            out.clear()
        elif m.get("sender") == "user":
            out.add(m["message_id"])
    return out


class Conversation:
    """The users and operators of the phase; acknowledged messages also go to the run's Recorder, so the
    checks after the load (nothing lost, nothing doubled) cover them."""

    def __init__(self, stack: Stack, opts: Options, run_id: str, rec: Recorder):
        self.stack = stack
        self.opts = opts
        self.run_id = run_id
        self.rec = rec
        self.seen = Observed()
        self.rng = random.Random(opts.seed + 1)
        self.frontend_token = issue_token(stack.settings.auth_secret, "bench-frontend", "frontend")
        self.running = False
        self._waiting: set[Replies | Inbox] = set()

    def stop(self) -> None:
        """End the phase: actors finish the step they are in; users and operators waiting stop waiting."""
        self.running = False
        for waiting in self._waiting:
            waiting.changed.set()

    def _is_running(self) -> bool:
        return self.running

    # -- users ----------------------------------------------------------------------------------

    async def user(self, i: int) -> None:
        """One widget: a chat at a time, `turns_per_chat` turns each."""
        delivery, ingest = Conn(self.stack.urls["delivery"]), Conn(self.stack.urls["ingest"])
        chat_n = seq = 0
        try:
            while self.running:
                chat_id = f"b{self.run_id}-cu{i}-c{chat_n}"
                chat_n += 1
                opened = await self._open_chat(delivery, chat_id)
                if opened is None:
                    await asyncio.sleep(0.5)
                    continue
                token, stream, reader, replies = opened
                self._waiting.add(replies)
                try:
                    for _ in range(self.opts.turns_per_chat):
                        last_ack = None
                        for _ in range(self.opts.messages_per_turn):
                            if not self.running:
                                return
                            message_id = f"{chat_id}-m{seq}"  # the chat's id first: see Inbox
                            seq += 1
                            if await self._send(ingest, chat_id, token, message_id):
                                last_ack = time.time()
                            await self._think(self.opts.user_think_ms)
                        if last_ack is None:
                            break  # ingest took none of this turn's messages: a new chat
                        seen_at = await replies.after(last_ack, REPLY_WAIT_S, self._is_running)
                        if seen_at is None:
                            if self.running:
                                self.seen.reply_timeouts += 1
                            break
                        self.seen.turns.append((seen_at, seen_at - last_ack))
                finally:
                    self._waiting.discard(replies)
                    await cancel_and_wait(reader)
                    await stream.close()
        finally:
            await delivery.close()
            await ingest.close()

    async def _open_chat(self, delivery: Conn, chat_id: str):
        """A chat token from delivery and the chat's stream opened with it (before its first message, as
        a widget's); (token, stream, its reader task, its replies) or None."""
        try:
            status, body = await delivery.request("POST", f"/v1/chats/{quote(chat_id)}/token", self.frontend_token)
            if status != 200:
                raise HttpError(f"chat token answered {status}")
            token = json.loads(body)["token"]
            stream = SseStream(self.stack.urls["delivery"], f"/v1/chats/{quote(chat_id)}/stream", token)
            await stream.open()
        except HttpError as exc:
            self.seen.errors[f"chat_stream: {str(exc)[:50]}"] += 1
            return None
        self.seen.chats_opened += 1
        replies = Replies()
        return token, stream, asyncio.create_task(_read_replies(stream, replies)), replies

    async def _send(self, ingest: Conn, chat_id: str, token: str, message_id: str) -> bool:
        """One user message with the chat token; True once ingest acknowledged it."""
        body = json.dumps({"message_id": message_id, "sender": "user", "text": USER_TEXT}).encode()
        self.rec.user_unconfirmed.add(message_id)  # until acknowledged: stored or not, it is not "unexpected"
        started = time.time()
        ok = await post_message(ingest, chat_id, token, body, self.seen.errors)
        if ok:
            done = time.time()
            self.rec.user_unconfirmed.discard(message_id)
            self.rec.user_acked.add(message_id)
            self.rec.sent_at[message_id] = started
            self.rec.path_of[message_id] = "http"
            self.rec.inbound_acked += 1
            self.seen.ingest.append((started, done - started, "user"))
        return ok

    async def _think(self, ms: float) -> None:
        if ms:
            await asyncio.sleep(ms / 1000 * self.rng.uniform(0.5, 1.5))

    # -- operators ------------------------------------------------------------------------------

    async def operator(self, j: int) -> None:
        """One operator: pull, think, reply through ingest, with its own operator token."""
        me = f"conv-op-{j}"
        token = issue_token(self.stack.settings.auth_secret, me, "operator")
        inbox = Inbox()
        stream = SseStream(self.stack.urls["delivery"], "/v1/operators/me/stream", token)
        try:
            await stream.open()
        except HttpError as exc:
            self.seen.errors[f"operator_stream: {str(exc)[:50]}"] += 1
            return
        reader = asyncio.create_task(_read_user_messages(stream, inbox))
        self._waiting.add(inbox)
        assigner, ingest = Conn(self.stack.urls["assigner"]), Conn(self.stack.urls["ingest"])
        handled: set[str] = set()
        wait, n = BACKOFF_MIN_S, 0
        ours = f"b{self.run_id}-cu"
        try:
            while self.running:
                t0 = time.time()
                try:
                    status, data = await assigner.request("POST", "/v1/assignments/next", token)
                except HttpError:
                    self.seen.errors["pull_connection"] += 1
                    await asyncio.sleep(0.2)
                    continue
                dt = time.time() - t0
                aid = chat_id = None
                if status == 200:
                    body = json.loads(data)
                    aid, chat_id = body["assignment_id"], body["chat"]["chat_id"]
                    result = "current" if aid in handled else "assigned"
                    known = unanswered_user_messages(body["chat"]["messages"])
                elif status == 204:
                    result = "empty"
                else:
                    self.seen.errors[f"pull_{status}"] += 1
                    result = "error"
                self.seen.pulls.append((t0, dt, result))
                if result != "assigned" or aid is None or chat_id is None:
                    await asyncio.sleep(wait * self.rng.uniform(0.5, 1.5))
                    wait = min(wait * 2, BACKOFF_MAX_S)
                    continue
                wait = BACKOFF_MIN_S
                handled.add(aid)
                if len(handled) > 64:
                    handled = {aid}
                if chat_id.startswith(ours) and not await inbox.wait_for(
                    chat_id, known, self.opts.messages_per_turn, OPERATOR_WAIT_S, self._is_running
                ):
                    if not self.running:
                        break  # the phase ended: no reply (the chat stays assigned, as a console closed)
                    self.seen.operator_wait_timeouts += 1
                inbox.by_chat.pop(chat_id, None)
                await self._think(self.opts.operator_think_ms)
                await self._reply(ingest, token, me, chat_id, f"b{self.run_id}-{me}-r{n}")
                n += 1
        finally:
            self._waiting.discard(inbox)
            await cancel_and_wait(reader)
            await stream.close()
            await assigner.close()
            await ingest.close()

    async def _reply(self, ingest: Conn, token: str, me: str, chat_id: str, message_id: str) -> None:
        body = json.dumps({"message_id": message_id, "sender": "operator", "operator_id": me, "text": REPLY_TEXT})
        self.rec.op_unconfirmed.add(message_id)
        started = time.time()
        if await post_message(ingest, chat_id, token, body.encode(), self.seen.errors):
            done = time.time()
            self.rec.op_unconfirmed.discard(message_id)
            self.rec.op_acked.add(message_id)
            self.rec.replies.append((started, done - started))
            self.rec.inbound_acked += 1
            self.seen.ingest.append((started, done - started, "operator"))

    def live_line(self) -> str:
        """The last three seconds in one line of the progress display."""
        now = time.time()
        turns = sum(1 for t in self.seen.turns[-2000:] if t[0] > now - 3) / 3
        recent = [p[1] for p in self.seen.pulls[-400:] if p[0] > now - 3]
        p99 = pct(recent, 0.99)
        return f"replies seen/s {turns:,.0f} │ pull p99 {'-' if p99 is None else f'{p99 * 1000:.0f} ms'}"


async def _read_replies(stream: SseStream, replies: Replies) -> None:
    """Read the chat's stream; note each operator message (the only events parsed)."""
    async for at, event in stream.events():
        if event.event != "message" or '"operator"' not in event.data:
            continue
        try:
            sender = json.loads(event.data).get("sender")
        except ValueError:
            continue
        if sender == "operator":
            replies.seen(at)


async def _read_user_messages(stream: SseStream, inbox: Inbox) -> None:
    """Read an operator's stream; note each user message (the only events parsed)."""
    async for _, event in stream.events():
        if event.event != "message" or '"user"' not in event.data:
            continue
        try:
            data = json.loads(event.data)
        except ValueError:
            continue
        if data.get("sender") == "user":
            inbox.seen(data["message_id"])


async def conversation_phase(
    stack: Stack, pool: asyncpg.Pool, opts: Options, run_id: str, rec: Recorder, progress: Progress | None
) -> tuple[dict, tuple[float, float]]:
    """Warm-up, the measured window (CPU of every watched process at both ends, py-spy with
    `--profile`), then the drain; the phase's figures (conversation_report.summarize) and its window."""
    conv = Conversation(stack, opts, run_id, rec)
    watched = stack.watched
    warmup, seconds = opts.conversation_warmup_s, opts.conversation_duration_s
    task = progress.add_task("conversation", total=warmup + seconds) if progress else None
    conv.running = True
    actors = [asyncio.create_task(conv.user(i)) for i in range(opts.conversation_users)]
    actors += [asyncio.create_task(conv.operator(j)) for j in range(opts.conversation_operators)]
    t0 = time.monotonic()
    spies: list = []
    try:
        await _until(conv, progress, task, t0, warmup)
        a, cpu0 = time.time(), watched.cpu()
        if opts.profile and not stack.external:
            out_dir = Path(opts.output).parent / "profiles"
            spies = start_profiles(watched.pids, max(1, seconds - 1), out_dir, PROFILED, "-conversation")
        await _until(conv, progress, task, t0, warmup + seconds)
        b, cpu1 = time.time(), watched.cpu()
    finally:
        conv.stop()
        await asyncio.gather(*actors, return_exceptions=True)
    profiles = await collect_profiles(spies) if spies else None
    drain_task = progress.add_task("drain      conversation", total=None) if progress else None
    drained = await wait_drained(pool, rec, run_id, opts.drain_timeout_s)
    if progress and drain_task is not None:
        progress.update(
            drain_task,
            total=1,
            completed=1,
            description=f"drain      {drained['stored']:,}/{drained['expected']:,} stored in {drained['seconds']} s",
        )
    _, _, per_s = await load_messages(pool, run_id)
    out = summarize((a, b), conv.seen, per_s, cpu0, cpu1)
    out["drain"] = drained
    out["users"], out["operators"] = opts.conversation_users, opts.conversation_operators
    out["messages_per_turn"], out["turns_per_chat"] = opts.messages_per_turn, opts.turns_per_chat
    if profiles:
        out["profiles"] = profiles
    return out, (a, b)


async def _until(conv: Conversation, progress: Progress | None, task, t0: float, until_s: float) -> None:
    """Sleep until `until_s` after t0, showing the live line."""
    while (elapsed := time.monotonic() - t0) < until_s:
        if progress is not None and task is not None:
            progress.update(task, completed=elapsed, description=f"conversation {conv.live_line()}")
        await asyncio.sleep(min(0.25, until_s - elapsed))
