"""Delivery's chat stream against real Kafka and Postgres: order, resume, exactly once, tokens, fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import timedelta

import httpx

from shared.auth import issue_token
from shared.events import (
    TOPIC_LIFECYCLE,
    ChatAssigned,
    ChatAssignedPayload,
    ChatCompleted,
    ChatCompletedPayload,
    MessageRecorded,
    MessageRecordedPayload,
    new_event_id,
    utcnow,
)
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, Producer, eventually, running, token


class SSE:
    """A Server-Sent Events reader over a streaming httpx response: events and comments as they come."""

    def __init__(self, response: httpx.Response, ignore: tuple[str, ...] = ()):
        self.response = response
        self.lines = response.aiter_lines()
        self.comments = 0
        self.ignore = ignore  # event types skipped (and counted) like comments
        self.ignored = 0

    async def next(self, timeout: float = 20.0) -> dict:
        """The next event: {"id", "event", "data"} (data parsed as JSON); comments are counted and skipped."""
        event: dict = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line == "":
                    if event.get("event") in self.ignore:
                        self.ignored += 1
                        event, data = {}, []
                    elif data or event:
                        event["data"] = json.loads("\n".join(data)) if data else None
                        return event
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name in ("id", "event", "retry"):
                    event[name] = value
        raise AssertionError("the stream ended")

    async def quiet(self, seconds: float) -> list[dict]:
        """Read for `seconds`: the events that came (comments are counted)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.next(timeout=left))
            except TimeoutError:
                break
        return got

    async def take(self, n: int, timeout: float = 20.0) -> list[dict]:
        """The next `n` events."""
        return [await self.next(timeout) for _ in range(n)]


@contextlib.asynccontextmanager
async def open_sse(url: str, tok: str, last_event_id: str | None = None, ignore: tuple[str, ...] = ()):
    """An open SSE stream at `url` (status checked by the caller through `.response`), skipping `ignore`d types."""
    headers = {"Authorization": f"Bearer {tok}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        async with client.stream("GET", url, headers=headers) as response:
            yield SSE(response, ignore)


def stream(url: str, chat_id: str, tok: str, last_event_id: str | None = None):
    """An open chat stream."""
    return open_sse(f"{url}/v1/chats/{chat_id}/stream", tok, last_event_id)


def frontend_token() -> str:
    return issue_token(TEST_SECRET, "web", "frontend")


def chat_token(chat_id: str, ttl: int = 600) -> str:
    return issue_token(TEST_SECRET, chat_id, "chat", ttl)


def recorded(chat_id: str, text: str, sender: str = "user", operator_id: str | None = None, at=None):
    """A message_recorded fact as the assigner's relay publishes it."""
    at = at or utcnow()
    return MessageRecorded(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="test",
        payload=MessageRecordedPayload(
            message_id=uuid.uuid4().hex, sender=sender, operator_id=operator_id, text=text, recorded_at=at
        ),
    )


def assigned(chat_id: str, operator_id: str):
    at = utcnow()
    return ChatAssigned(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="test",
        payload=ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id=operator_id, assigned_at=at, via="pull"),
    )


def completed(chat_id: str):
    at = utcnow()
    return ChatCompleted(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at,
        producer="test",
        payload=ChatCompletedPayload(completed_by="boss", completed_at=at),
    )


async def test_a_conversation_through_ingest_and_the_assigner_appears_on_the_chat_stream_in_order(env):
    settings = env.with_settings(delivery_heartbeat_s=0.5)
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    ingest_port = free_port()
    async with (
        running("assigner", settings) as assigner,
        serving("ingest", settings, ingest_port) as ingest_url,
        serving("delivery", settings, free_port()) as url,
        httpx.AsyncClient(timeout=10) as http,
    ):
        minted = await http.post(
            f"{url}/v1/chats/{chat}/token", headers={"Authorization": f"Bearer {frontend_token()}"}
        )
        assert minted.status_code == 200, minted.text
        widget = minted.json()["token"]
        assert minted.json()["chat_id"] == chat and 0 < minted.json()["expires_in"] <= 900

        async def user_says(text):
            r = await http.post(
                f"{ingest_url}/v1/chats/{chat}/messages",
                headers={"Authorization": f"Bearer {widget}"},
                json={"message_id": uuid.uuid4().hex, "sender": "user", "text": text},
            )
            assert r.status_code == 202, r.text

        async with stream(url, chat, widget) as sse:
            assert sse.response.status_code == 200
            assert sse.response.headers["content-type"].startswith("text/event-stream")
            await user_says("hey")
            first = await sse.next()
            assert first["event"] == "message" and first["id"] == "1"
            assert first["data"]["text"] == "hey" and first["data"]["sender"] == "user"

            async def pulled():
                r = await assigner.post("/v1/assignments/next", headers=token("op-7"))
                return r if r.status_code == 200 else None

            await eventually(pulled)
            joined = await sse.next()
            assert joined["event"] == "operator_joined" and joined["id"] == "2"
            assert joined["data"]["display_name"] == "op-7"
            await user_says("how are you?")
            r = await http.post(
                f"{ingest_url}/v1/chats/{chat}/messages",
                headers=token("op-7"),
                json={
                    "message_id": uuid.uuid4().hex,
                    "sender": "operator",
                    "operator_id": "op-7",
                    "text": "fine, how can I help?",
                },
            )
            assert r.status_code == 202, r.text
            rest = await sse.take(2)
            assert [(e["id"], e["data"]["sender"], e["data"]["text"]) for e in rest] == [
                ("3", "user", "how are you?"),
                ("4", "operator", "fine, how can I help?"),
            ]
            assert rest[1]["data"]["display_name"] == "op-7"
            assert await sse.quiet(1.2) == []
            assert sse.comments >= 1, "no heartbeat comment within two heartbeat intervals"


async def test_resuming_with_last_event_id_gives_every_later_event_once_with_no_gap(env):
    settings = env.with_settings(delivery_heartbeat_s=1)
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with serving("delivery", settings, free_port()) as url, Producer(settings) as kafka:
        for i in range(5):
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, f"m{i}"))
        async with stream(url, chat, chat_token(chat)) as sse:
            got = await sse.take(5)
        assert [e["data"]["text"] for e in got] == [f"m{i}" for i in range(5)]
        assert [e["id"] for e in got] == ["1", "2", "3", "4", "5"]

        # Disconnected after id 3 (say): events keep coming while the widget is away.
        for i in range(5, 8):
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, f"m{i}"))

        async def stored():
            async with stream(url, chat, chat_token(chat), last_event_id="7") as probe:
                # 422 while id 7 is still ahead of the stream
                return probe.response.status_code == 200 and await probe.next()

        await eventually(stored)
        async with stream(url, chat, chat_token(chat), last_event_id="3") as sse:
            replayed = await sse.take(5)
            assert [e["data"]["text"] for e in replayed] == ["m3", "m4", "m5", "m6", "m7"]
            # While the resumed stream is open, new events arrive live, right after the replay.
            await kafka.send(TOPIC_LIFECYCLE, assigned(chat, "op-1"))
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "m8", sender="operator", operator_id="op-1"))
            await kafka.send(TOPIC_LIFECYCLE, completed(chat))
            live = await sse.take(3)
        assert [e["id"] for e in replayed + live] == [str(n) for n in range(4, 12)]
        assert [e["event"] for e in live] == ["operator_joined", "message", "chat_completed"]
        async with stream(url, chat, chat_token(chat), last_event_id="11") as sse:
            assert await sse.quiet(2.5) == [], "resuming at the last id replayed something"
            assert sse.comments >= 1


async def test_a_redelivered_fact_is_stored_once_and_facts_older_than_the_window_not_at_all(env):
    settings = env.with_settings(delivery_retention_s=3600)
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    fact = recorded(chat, "once")
    stale = recorded(chat, "ancient", at=utcnow() - timedelta(hours=2))
    async with running("delivery", settings), Producer(settings) as kafka:
        await kafka.send(TOPIC_LIFECYCLE, fact)
        await kafka.send(TOPIC_LIFECYCLE, fact)
        await kafka.send(TOPIC_LIFECYCLE, stale)
        await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "after"))
        conn = await env.connect()
        try:

            async def rows():
                got = await conn.fetch(
                    "SELECT seq, data->>'text' AS text FROM delivery.stream_events "
                    "WHERE stream = 'chat:' || $1 ORDER BY seq",
                    chat,
                )
                return got if len(got) >= 2 else None

            got = await eventually(rows)
            await asyncio.sleep(0.5)
            got = await rows()
            assert [(r["seq"], r["text"]) for r in got] == [(1, "once"), (2, "after")]
        finally:
            await conn.close()


async def test_old_stream_events_are_pruned_and_sequences_never_reused(env):
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with running("delivery", env.settings) as delivery, Producer(env.settings) as kafka:
        await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "old"))
        conn = await env.connect()
        try:
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM delivery.stream_events WHERE stream = 'chat:' || $1", chat)
            )
            await conn.execute("UPDATE delivery.stream_events SET recorded_at = now() - interval '25 hours'")
            await conn.execute("UPDATE delivery.processed_events SET applied_at = now() - interval '25 hours'")
            removed = await delivery.app.state.pruner.prune_once()
            assert removed["delivery.stream_events"] == 1 and removed["delivery.processed_events"] >= 1
            assert await conn.fetchval("SELECT count(*) FROM delivery.processed_events") == 0
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "new"))
            row = await eventually(
                lambda: conn.fetchrow(
                    "SELECT seq, data->>'text' AS text FROM delivery.stream_events WHERE stream = 'chat:' || $1", chat
                )
            )
            assert (row["seq"], row["text"]) == (2, "new")
        finally:
            await conn.close()


async def test_chat_tokens_read_only_their_own_chat_and_expired_or_missing_tokens_get_401(env):
    async with running("delivery", env.settings) as delivery:

        async def status(chat, headers):
            # Only refusals are tested here: the in-process transport cannot hold a stream open.
            r = await delivery.get(f"/v1/chats/{chat}/stream", headers=headers)
            return r.status_code, r.json()["error"]["code"]

        assert await status("chat-b", {"Authorization": f"Bearer {chat_token('chat-a')}"}) == (403, "forbidden_chat")
        expired = issue_token(TEST_SECRET, "chat-a", "chat", ttl_s=-10)
        assert await status("chat-a", {"Authorization": f"Bearer {expired}"}) == (401, "token_expired")
        assert await status("chat-a", {}) == (401, "missing_token")
        assert await status("chat-a", token("op-1")) == (403, "forbidden_role")
        assert await status("chat-a", {"Authorization": f"Bearer {chat_token('chat-a')}", "Last-Event-ID": "abc"}) == (
            422,
            "validation_error",
        )
        for bad in ("-1", "1e3", "9" * 19, "\u00b2"):  # "²": str.isdigit() says yes, int() says no
            r = await delivery.get(f"/v1/chats/chat-a/stream?access_token={chat_token('chat-a')}&last_event_id={bad}")
            assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error"), bad
        r = await delivery.get(f"/v1/chats/chat-b/stream?access_token={chat_token('chat-a')}")
        assert r.status_code == 403
        r = await delivery.post("/v1/chats/chat-a/token", headers={"Authorization": f"Bearer {chat_token('chat-a')}"})
        assert r.status_code == 403  # a chat token cannot mint more tokens
        r = await delivery.post("/v1/chats/chat-a/token", headers=token("op-1"))
        assert r.status_code == 403
        r = await delivery.post("/widget/token", json={"chat_id": "chat-a"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"  # dev mode only


async def test_ingest_accepts_a_chat_token_only_for_user_messages_of_its_own_chat(env):
    async with running("ingest", env.settings) as ingest:
        mine = {"Authorization": f"Bearer {chat_token('chat-a')}"}
        user = {"message_id": uuid.uuid4().hex, "sender": "user", "text": "hi"}
        r = await ingest.post("/v1/chats/chat-b/messages", headers=mine, json=user)
        assert r.status_code == 403 and r.json()["error"]["code"] == "chat_mismatch"
        r = await ingest.post(
            "/v1/chats/chat-a/messages",
            headers=mine,
            json={
                "message_id": uuid.uuid4().hex,
                "sender": "operator",
                "operator_id": "op-1",
                "text": "I am the operator now",
            },
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "chat_mismatch"
        r = await ingest.post("/v1/messages:batch", headers=mine, json={"messages": [dict(user, chat_id="chat-a")]})
        assert r.status_code == 403
        expired = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'chat-a', 'chat', ttl_s=-10)}"}
        r = await ingest.post("/v1/chats/chat-a/messages", headers=expired, json=user)
        assert r.status_code == 401
        r = await ingest.post("/v1/chats/chat-a/messages", headers=mine, json=user)
        assert r.status_code == 202, r.text


async def test_every_instance_pushes_every_event_to_the_streams_it_holds(env):
    settings = env.with_settings(delivery_heartbeat_s=1)
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with (
        serving("delivery", settings, free_port()) as one,
        serving("delivery", settings, free_port()) as two,
        Producer(settings) as kafka,
    ):
        async with stream(one, chat, chat_token(chat)) as a, stream(two, chat, chat_token(chat)) as b:
            started = time.monotonic()
            for i in range(3):
                await kafka.send(TOPIC_LIFECYCLE, recorded(chat, f"m{i}"))
            got_a, got_b = await asyncio.gather(a.take(3), b.take(3))
        assert [e["data"]["text"] for e in got_a] == [e["data"]["text"] for e in got_b] == ["m0", "m1", "m2"]
        assert [e["id"] for e in got_a] == [e["id"] for e in got_b] == ["1", "2", "3"]
        assert time.monotonic() - started < 15


async def test_a_stream_ends_with_its_token_and_a_fresh_token_resumes_where_it_stopped(env):
    settings = env.with_settings(delivery_heartbeat_s=0.5)
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with serving("delivery", settings, free_port()) as url, Producer(settings) as kafka:
        short = chat_token(chat, ttl=3)
        async with stream(url, chat, short) as sse:
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "one"))
            assert (await sse.next())["id"] == "1"
            started = time.monotonic()
            try:
                await sse.next(timeout=10)
                ended = False
            except AssertionError:
                ended = True
            assert ended and time.monotonic() - started < 5, "the stream outlived its token"
        async with stream(url, chat, short, last_event_id="1") as sse:
            assert sse.response.status_code == 401
        await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "two"))
        async with stream(url, chat, chat_token(chat), last_event_id="1") as sse:
            assert [(e["id"], e["data"]["text"]) for e in await sse.take(1)] == [("2", "two")]


async def test_a_resume_point_older_than_the_window_says_so_and_one_ahead_of_the_stream_is_refused(env):
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with serving("delivery", env.settings, free_port()) as url, Producer(env.settings) as kafka:
        for text in ("a", "b", "c"):
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, text))
        conn = await env.connect()
        try:
            await eventually(
                lambda: conn.fetchval(
                    "SELECT count(*) = 3 FROM delivery.stream_events WHERE stream = 'chat:' || $1", chat
                )
            )
            await conn.execute("DELETE FROM delivery.stream_events WHERE stream = 'chat:' || $1 AND seq < 3", chat)
        finally:
            await conn.close()
        async with stream(url, chat, chat_token(chat), last_event_id="1") as sse:
            gap, event = await sse.take(2)
        assert gap["event"] == "gap" and "id" not in gap and gap["data"] == {"type": "gap", "after": 1, "resumes_at": 3}
        assert (event["id"], event["data"]["text"]) == ("3", "c")
        async with stream(url, chat, chat_token(chat), last_event_id="4") as sse:
            assert sse.response.status_code == 422
            assert "ahead" in json.loads(await sse.response.aread())["error"]["message"]


async def test_streams_keep_getting_events_after_the_listen_connection_is_killed(env):
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with serving("delivery", env.settings, free_port()) as url, Producer(env.settings) as kafka:
        conn = await env.connect()
        try:
            async with stream(url, chat, chat_token(chat)) as sse:
                await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "before"))
                assert (await sse.next())["data"]["text"] == "before"
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'delivery-listen' AND datname = current_database()"
                )
                assert killed == 1
                # Sent while the listener may still be reconnecting: the reconnect wakes every stream.
                await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "after"))
                got = await sse.next(timeout=15)
                assert (got["id"], got["data"]["text"]) == ("2", "after")
            await eventually(
                lambda: conn.fetchval(
                    "SELECT count(*) = 1 FROM pg_stat_activity "
                    "WHERE application_name = 'delivery-listen' AND datname = current_database()"
                )
            )
        finally:
            await conn.close()
