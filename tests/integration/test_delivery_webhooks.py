"""Webhooks against real Kafka and Postgres and a real HTTP receiver on loopback that checks every signature."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

from shared.events import TOPIC_LIFECYCLE
from tests.e2e.servers import free_port
from tests.harness import Producer, eventually, running, token
from tests.integration.test_delivery_stream import completed, recorded

ADMIN = token("boss", "admin")
FAST = dict(
    delivery_webhook_backoff_base_s=0.05,
    delivery_webhook_backoff_max_s=0.4,
    delivery_webhook_poll_interval_s=0.05,
    delivery_webhook_timeout_s=2,
)


class Receiver:
    """An integration's endpoint: verifies each request's Standard Webhooks signature, records the facts."""

    def __init__(self, secret: str, status: int = 204):
        self.webhook = Webhook(secret)
        self.status = status
        self.received: list[dict] = []  # every verified request, duplicates included
        self.bad: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            fact = self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            self.bad.append(str(exc))
            status = 401
        else:
            assert headers["webhook-id"] == fact["event_id"]
            self.received.append(fact)
            status = self.status
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def firsts(self) -> dict[str, list[str]]:
        """Per chat, the texts in the order they first arrived."""
        seen, out = set(), {}
        for fact in self.received:
            if fact["event_id"] not in seen:
                seen.add(fact["event_id"])
                out.setdefault(fact["chat_id"], []).append(fact["payload"]["text"])
        return out


@contextlib.asynccontextmanager
async def listening(app, port: int):
    """Serve `app` on 127.0.0.1:port until the block ends (then the port refuses connections)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def register(client, url: str, **extra) -> dict:
    r = await client.post("/v1/admin/webhooks", headers=ADMIN, json={"url": url, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def test_every_fact_reaches_a_receiver_that_was_down_for_many_retries_in_per_chat_order(env):
    settings = env.with_settings(**FAST)
    chats = [f"chat-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    port = free_port()
    async with running("delivery", settings) as delivery, Producer(settings) as kafka:
        hook = await register(delivery, f"http://127.0.0.1:{port}/hooks", event_types=["message_recorded"])
        receiver = Receiver(hook["secret"])
        sent: dict[str, list[str]] = {c: [] for c in chats}

        async def produce(n0, n1):
            for i in range(n0, n1):
                for chat in chats:
                    await kafka.send(TOPIC_LIFECYCLE, recorded(chat, f"{chat}-{i}"))
                    sent[chat].append(f"{chat}-{i}")

        async with listening(receiver, port):
            await produce(0, 5)
            await eventually(lambda: _count(receiver, 15))
        # The receiver is gone: connections are refused; the facts keep coming.
        await produce(5, 12)

        async def retried():
            r = await delivery.get(f"/v1/admin/webhooks/{hook['id']}/deliveries", headers=ADMIN)
            pending = [d for d in r.json()["deliveries"] if d["status"] == "pending"]
            return pending if pending and max(d["attempts"] for d in pending) >= 5 else None

        pending = await eventually(retried)
        assert all(d["last_error"] for d in pending if d["attempts"])
        # Only the oldest pending delivery of each chat is ever tried: the others wait their turn.
        assert sorted(d["chat_id"] for d in pending if d["attempts"]) == sorted(chats)

        async with listening(receiver, port):
            await eventually(lambda: _count(receiver, 36), timeout=30)
        assert receiver.bad == []
        assert receiver.firsts() == sent
        r = await delivery.get(f"/v1/admin/webhooks/{hook['id']}/deliveries?limit=500", headers=ADMIN)
        assert [d["status"] for d in r.json()["deliveries"]] == ["delivered"] * 36


async def _count(receiver: Receiver, n: int) -> bool:
    return len({f["event_id"] for f in receiver.received}) >= n


async def test_two_instances_share_the_sending_and_never_send_one_delivery_twice(env):
    settings = env.with_settings(**FAST)
    chats = [f"chat-{uuid.uuid4().hex[:6]}" for _ in range(8)]
    port = free_port()
    async with running("delivery", settings) as one, running("delivery", settings), Producer(settings) as kafka:
        hook = await register(one, f"http://127.0.0.1:{port}/")
        receiver = Receiver(hook["secret"])
        sent: dict[str, list[str]] = {c: [] for c in chats}
        async with listening(receiver, port):
            for i in range(10):
                for chat in chats:
                    await kafka.send(TOPIC_LIFECYCLE, recorded(chat, f"{chat}-{i}"))
                    sent[chat].append(f"{chat}-{i}")
            await eventually(lambda: _count(receiver, 80), timeout=30)
            await asyncio.sleep(0.5)
        ids = [f["event_id"] for f in receiver.received]
        assert len(ids) == len(set(ids)) == 80, "a delivery was sent twice"
        assert receiver.firsts() == sent and receiver.bad == []


async def test_an_endpoint_failing_longer_than_the_limit_is_disabled_and_resumes_in_order_when_enabled(env):
    settings = env.with_settings(**FAST, delivery_webhook_disable_after_s=1)
    chat = f"chat-{uuid.uuid4().hex[:6]}"
    port = free_port()
    async with running("delivery", settings) as delivery, Producer(settings) as kafka:
        hook = await register(delivery, f"http://127.0.0.1:{port}/")
        receiver = Receiver(hook["secret"], status=500)
        async with listening(receiver, port):
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "a"))

            async def disabled():
                r = await delivery.get("/v1/admin/webhooks", headers=ADMIN)
                (endpoint,) = r.json()
                return endpoint if endpoint["disabled_at"] else None

            endpoint = await eventually(disabled)
            assert "HTTP 500" in endpoint["disabled_reason"] and "secret" not in json.dumps(endpoint).replace(
                '"secret": null', ""
            )
            await kafka.send(TOPIC_LIFECYCLE, recorded(chat, "b"))  # queued while disabled
            tries = len(receiver.received)
            await asyncio.sleep(0.6)
            assert len(receiver.received) == tries, "a disabled endpoint was still called"
            receiver.status = 200
            r = await delivery.post(f"/v1/admin/webhooks/{hook['id']}/enable", headers=ADMIN)
            assert r.status_code == 204
            await eventually(lambda: _count(receiver, 2))
        assert receiver.firsts() == {chat: ["a", "b"]}
        r = await delivery.get(f"/v1/admin/webhooks/{hook['id']}/deliveries", headers=ADMIN)
        first = r.json()["deliveries"][-1]
        assert first["status"] == "delivered" and first["attempts"] >= 2
        before = len(receiver.received)
        r = await delivery.post(f"/v1/admin/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver", headers=ADMIN)
        assert r.status_code == 202

        async def sent_again():
            return [f["payload"]["text"] for f in receiver.received[before:]]

        async with listening(receiver, port):
            assert await eventually(sent_again) == ["a"]


async def test_webhook_admin_refuses_bad_input_with_clear_errors(env):
    async with running("delivery", env.settings) as delivery:

        async def post(body, headers=ADMIN):
            r = await delivery.post("/v1/admin/webhooks", headers=headers, json=body)
            return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None

        for url in (
            "ftp://example.com/x",
            "javascript:alert(1)",
            "not a url",
            "file:///etc/passwd",
            "http://",
            "",
            "http://\u2603.com/",
        ):
            assert await post({"url": url}) == (422, "validation_error"), url
        assert await post({"url": "https://example.com/h", "event_types": ["no_such_fact"]}) == (
            422,
            "validation_error",
        )
        assert await post({"url": "https://example.com/h", "secret": "whsec_short"}) == (422, "validation_error")
        assert await post({"url": "https://example.com/h", "extra": 1}) == (422, "validation_error")
        assert await post({"url": "ftp://x"}, headers={}) == (401, "missing_token")
        assert await post({"url": "https://example.com/h"}, headers=token("op-1")) == (403, "forbidden_role")
        created = await delivery.post("/v1/admin/webhooks", headers=ADMIN, json={"url": "https://example.com/h"})
        assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
        listed = (await delivery.get("/v1/admin/webhooks", headers=ADMIN)).json()
        assert [w["secret"] for w in listed] == [None]
        missing = uuid.uuid4()
        assert (await delivery.delete(f"/v1/admin/webhooks/{missing}", headers=ADMIN)).status_code == 404
        r = await delivery.post(f"/v1/admin/webhooks/{missing}/deliveries/1/redeliver", headers=ADMIN)
        assert r.status_code == 404
        hook = created.json()["id"]
        r = await delivery.post(f"/v1/admin/webhooks/{hook}/deliveries/{2**64}/redeliver", headers=ADMIN)
        assert r.status_code == 422
        r = await delivery.get(f"/v1/admin/webhooks/{hook}/deliveries?before={2**64}", headers=ADMIN)
        assert r.status_code == 422
        r = await delivery.get(f"/v1/admin/webhooks/{hook}/deliveries", headers=ADMIN)
        assert r.json() == {"deliveries": [], "next_before": None}
        assert (await delivery.delete(f"/v1/admin/webhooks/{created.json()['id']}", headers=ADMIN)).status_code == 204
        assert (await delivery.get("/v1/admin/webhooks", headers=ADMIN)).json() == []


async def test_facts_are_queued_only_for_endpoints_that_exist_and_want_their_type(env):
    chat = f"chat-{uuid.uuid4().hex[:6]}"
    nowhere = f"http://127.0.0.1:{free_port()}/"  # nothing listens: deliveries stay queued
    async with running("delivery", env.with_settings(**FAST)) as delivery, Producer(env.settings) as kafka:
        conn = await env.connect()
        try:

            async def applied(fact):
                await kafka.send(TOPIC_LIFECYCLE, fact)
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT count(*) FROM delivery.processed_events WHERE event_id = $1", fact.event_id
                    )
                )

            await applied(recorded(chat, "before any endpoint"))
            assert await conn.fetchval("SELECT count(*) FROM delivery.webhook_deliveries") == 0
            closing = await register(delivery, nowhere, event_types=["chat_completed"])
            await applied(recorded(chat, "not wanted"))
            await applied(completed(chat))
            everything = await register(delivery, nowhere)
            await applied(recorded(chat, "wanted by one"))
            rows = await conn.fetch("SELECT endpoint_id::text, type FROM delivery.webhook_deliveries ORDER BY id")
            assert [(r["endpoint_id"], r["type"]) for r in rows] == [
                (closing["id"], "chat_completed"),
                (everything["id"], "message_recorded"),
            ]
        finally:
            await conn.close()
