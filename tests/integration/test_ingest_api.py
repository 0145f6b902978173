"""Ingest over HTTP against real Kafka and Postgres: accepted events, duplicates, validation, size, auth."""

import asyncio
import time
import uuid

import jwt
import pytest

from services.ingest.domain import MAX_MESSAGE_BYTES
from shared.events import INBOUND, TOPIC_INBOUND
from tests.harness import TEST_SECRET, read_topic, record_json, running, token

FRONTEND = token("web", "frontend")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


def mid() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def user(text: str = "hey", message_id: str | None = None, **extra) -> dict:
    return {"message_id": mid() if message_id is None else message_id, "sender": "user", "text": text, **extra}


async def post(api, chat_id: str, body, headers=FRONTEND):
    return await api.post(f"/v1/chats/{chat_id}/messages", json=body, headers=headers)


async def inbound(env, min_records: int, timeout: float = 20.0) -> list:
    return await read_topic(env.settings, TOPIC_INBOUND, min_records=min_records, timeout=timeout)


async def test_accepted_messages_are_on_chat_inbound_keyed_by_chat_and_in_order(env):
    chats = [cid(), cid(), cid()]
    sent: dict[str, list[str]] = {c: [] for c in chats}
    event_ids = {}
    async with running("ingest", env.settings) as api:
        for i in range(8):
            for chat in chats:
                body = user(f"line {i}")
                r = await post(api, chat, body)
                assert r.status_code == 202, r.text
                assert r.json()["duplicate"] is False
                sent[chat].append(body["message_id"])
                event_ids[body["message_id"]] = r.json()["event_id"]
    records = await inbound(env, min_records=24)
    assert len(records) == 24
    partitions: dict[str, set[int]] = {c: set() for c in chats}
    seen: dict[str, list[str]] = {c: [] for c in chats}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = INBOUND.validate_python(record_json(rec))
        assert rec.key == event.chat_id.encode()
        assert event.type == "user_message" and event.producer == "ingest"
        assert str(event.event_id) == event_ids[event.payload.message_id]
        partitions[event.chat_id].add(rec.partition)
        seen[event.chat_id].append(event.payload.message_id)
    assert all(len(p) == 1 for p in partitions.values())
    assert seen == sent


async def test_an_operator_message_becomes_an_operator_message_event(env):
    chat = cid()
    async with running("ingest", env.settings) as api:
        body = {"message_id": mid(), "sender": "operator", "operator_id": "op-7", "text": "hello",
                "sent_at": "2026-03-01T10:00:00+02:00"}
        r = await post(api, chat, body)
        assert r.status_code == 202, r.text
    [rec] = await inbound(env, 1)
    event = INBOUND.validate_python(record_json(rec))
    assert event.type == "operator_message"
    assert event.payload.operator_id == "op-7" and event.payload.text == "hello"
    assert event.payload.sent_at.isoformat() == "2026-03-01T10:00:00+02:00"
    assert str(event.event_id) == r.json()["event_id"]


async def test_the_same_message_id_again_returns_the_first_event_id_as_a_duplicate(env):
    chat = cid()
    body = user("hey")
    async with running("ingest", env.settings) as api:
        first = await post(api, chat, body)
        again = await post(api, chat, body)
        retyped = await post(api, chat, {**body, "text": "hey (edited)"})
        other_chat = await post(api, cid(), body)
    assert first.status_code == again.status_code == retyped.status_code == 202
    assert first.json()["duplicate"] is False
    assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    assert retyped.json() == again.json()
    # The key is (chat_id, message_id): the same message id in another chat is another message.
    assert other_chat.json()["duplicate"] is False and other_chat.json()["event_id"] != first.json()["event_id"]
    records = await inbound(env, 3, timeout=3)
    mine = [record_json(r) for r in records if r.key == chat.encode()]
    assert [m["event_id"] for m in mine] == [first.json()["event_id"]]
    assert mine[0]["payload"]["text"] == "hey"


async def test_duplicates_are_recognised_across_restarts_and_instances(env):
    chat = cid()
    body = user()
    async with running("ingest", env.settings) as a, running("ingest", env.settings) as b:
        first = (await post(a, chat, body)).json()
        assert (await post(b, chat, body)).json() == {"event_id": first["event_id"], "duplicate": True}
    async with running("ingest", env.settings) as restarted:
        assert (await post(restarted, chat, body)).json() == {"event_id": first["event_id"], "duplicate": True}


async def test_concurrent_retries_on_several_instances_yield_one_event_id_and_one_first_answer(env):
    chat = cid()
    body = user()
    async with running("ingest", env.settings) as a, running("ingest", env.settings) as b:
        answers = await asyncio.gather(*(post(a if i % 2 else b, chat, body) for i in range(20)))
    assert all(r.status_code == 202 for r in answers)
    assert len({r.json()["event_id"] for r in answers}) == 1
    assert sum(1 for r in answers if r.json()["duplicate"] is False) == 1
    records = await inbound(env, 1, timeout=3)
    # Every copy on the topic (a request may re-publish while the first is in flight) is the same event.
    assert {record_json(r)["event_id"] for r in records} == {answers[0].json()["event_id"]}


LONG_ID = "x" * 129
INVALID = [
    pytest.param("c-1", user(""), "text", id="empty-text"),
    pytest.param("c-1", user("x" * 4001), "text", id="text-over-4000"),
    pytest.param("c-1", {"message_id": "m-1", "sender": "user"}, "text", id="missing-text"),
    pytest.param("c-1", user(message_id=""), "message_id", id="empty-message-id"),
    pytest.param("c-1", user(message_id="has space"), "message_id", id="message-id-bad-char"),
    pytest.param("c-1", user(message_id=LONG_ID), "message_id", id="message-id-too-long"),
    pytest.param("c-1", {"sender": "user", "text": "hi"}, "message_id", id="missing-message-id"),
    pytest.param("bad$chat", user(), "chat_id", id="chat-id-bad-char"),
    pytest.param(LONG_ID, user(), "chat_id", id="chat-id-too-long"),
    pytest.param("c-1", {"message_id": "m-1", "sender": "operator", "text": "hi"}, "operator_id",
                 id="operator-without-operator-id"),
    pytest.param("c-1", user(operator_id="op-1"), "operator_id", id="user-with-operator-id"),
    pytest.param("c-1", {"message_id": "m-1", "sender": "operator", "operator_id": "op\t1", "text": "hi"},
                 "operator_id", id="operator-id-bad-char"),
    pytest.param("c-1", {"message_id": "m-1", "sender": "bot", "text": "hi"}, "sender", id="unknown-sender"),
    pytest.param("c-1", {"message_id": "m-1", "text": "hi"}, "sender", id="missing-sender"),
    pytest.param("c-1", user(priority="high"), "priority", id="unknown-field"),
    pytest.param("c-1", user(chat_id="c-1"), "chat_id", id="chat-id-in-body"),
    pytest.param("c-1", user(sent_at="2026-01-01T10:00:00"), "sent_at", id="sent-at-without-zone"),
    pytest.param("c-1", user(sent_at="yesterday"), "sent_at", id="sent-at-not-a-date"),
    pytest.param("c-1", user(message_id=42), "message_id", id="message-id-not-a-string"),
    pytest.param("c-1", ["not", "an", "object"], "body", id="body-not-an-object"),
]


@pytest.mark.parametrize("chat_id,body,field", INVALID)
async def test_an_invalid_message_gets_422_naming_the_field_and_nothing_is_published(env, chat_id, body, field):
    async with running("ingest", env.settings) as api:
        r = await post(api, chat_id, body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert await inbound(env, 1, timeout=1) == []


async def test_a_body_that_is_not_json_gets_422(env):
    async with running("ingest", env.settings) as api:
        r = await api.post("/v1/chats/c-1/messages", content=b"{not json", headers=FRONTEND)
        empty = await api.post("/v1/chats/c-1/messages", content=b"", headers=FRONTEND)
    assert r.status_code == empty.status_code == 422
    assert r.json()["error"]["details"][0]["type"] == "json_invalid"


async def test_an_oversized_body_gets_413_with_or_without_content_length(env):
    big = b'{"message_id": "m-1", "sender": "user", "text": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'

    async def chunked():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    async with running("ingest", env.settings) as api:
        with_length = await api.post("/v1/chats/c-1/messages", content=big, headers=FRONTEND)
        without_length = await api.post("/v1/chats/c-1/messages", content=chunked(), headers=FRONTEND)
        huge_batch = await api.post("/v1/messages:batch", content=b"[" + b" " * (40 * 1024 * 1024) + b"]",
                                    headers=FRONTEND)
    assert "content-length" in with_length.request.headers
    assert "content-length" not in without_length.request.headers
    for r in (with_length, without_length, huge_batch):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"


def _expired_token() -> dict:
    now = int(time.time())
    claims = {"sub": "web", "role": "frontend", "iat": now - 7200, "exp": now - 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, TEST_SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize("headers,status,code", [
    pytest.param({}, 401, "missing_token", id="missing"),
    pytest.param({"Authorization": "Basic d2ViOnB3"}, 401, "missing_token", id="not-bearer"),
    pytest.param({"Authorization": "Bearer not.a.jwt"}, 401, "invalid_token", id="garbage"),
    pytest.param(token("web", "frontend", secret="another-secret-0123456789-abcdefghijkl"), 401, "invalid_token",
                 id="wrong-signature"),
    pytest.param(_expired_token(), 401, "token_expired", id="expired"),
    pytest.param(token("boss", "admin"), 403, "forbidden_role", id="admin-role"),
])
async def test_auth_is_checked_before_the_body(env, headers, status, code):
    async with running("ingest", env.settings) as api:
        valid = await post(api, "c-1", user(), headers=headers)
        invalid = await api.post("/v1/chats/c-1/messages", content=b"{broken", headers=headers)
        bad_chat = await post(api, "bad$chat", user(""), headers=headers)
        batch = await api.post("/v1/messages:batch", content=b"[]", headers=headers)
    for r in (valid, invalid, bad_chat, batch):
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code


async def test_an_operator_token_may_post_only_its_own_operator_messages(env):
    chat = cid()
    me = token("op-1", "operator")
    async with running("ingest", env.settings) as api:
        own = await post(api, chat, {"message_id": mid(), "sender": "operator", "operator_id": "op-1", "text": "hi"},
                         headers=me)
        other = await post(api, chat, {"message_id": mid(), "sender": "operator", "operator_id": "op-2", "text": "x"},
                           headers=me)
        as_user = await post(api, chat, user("pretending"), headers=me)
        batch = await api.post("/v1/messages:batch", json={"messages": []}, headers=me)
    assert own.status_code == 202, own.text
    assert other.status_code == 403 and other.json()["error"]["code"] == "operator_mismatch"
    assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "operator_mismatch"
    assert batch.status_code == 403 and batch.json()["error"]["code"] == "forbidden_role"


async def test_a_batch_answers_per_message_and_publishes_the_valid_ones_in_order(env):
    chat_a, chat_b = cid(), cid()
    dup = mid()
    async with running("ingest", env.settings) as api:
        earlier = await post(api, chat_b, user("earlier", message_id=dup))
        items = [
            {"chat_id": chat_a, **user("a1")},
            {"chat_id": chat_b, **user("b-dup", message_id=dup)},
            {"chat_id": chat_a, **user("")},
            {"chat_id": chat_a, **user("a2")},
            {"chat_id": "bad chat", **user("x")},
            {"chat_id": chat_a, "message_id": "m-op", "sender": "operator", "operator_id": "op-1", "text": "a3"},
            "not an object",
        ]
        items.append(dict(items[0]))  # the same message twice in one batch
        r = await api.post("/v1/messages:batch", json={"messages": items}, headers=FRONTEND)
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["index"] for x in results] == list(range(len(items)))
    assert [x["status"] for x in results] == [202, 202, 422, 202, 422, 202, 422, 202]
    assert results[1] == {**results[1], "duplicate": True, "event_id": earlier.json()["event_id"]}
    assert results[2]["error"]["details"][0]["field"] == "text" and results[2]["chat_id"] == chat_a
    assert results[4]["error"]["details"][0]["field"] == "chat_id"
    assert results[6]["error"]["details"][0]["field"] == "body"
    assert results[7]["event_id"] == results[0]["event_id"] and results[7]["duplicate"] is True
    assert results[0]["duplicate"] is False and results[3]["duplicate"] is False
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 2, 3)
    records = await inbound(env, 4)
    on_a = [record_json(x) for x in sorted(records, key=lambda x: x.offset) if x.key == chat_a.encode()]
    assert [e["payload"]["text"] for e in on_a] == ["a1", "a2", "a3"]
    assert [e["event_id"] for e in on_a] == [results[i]["event_id"] for i in (0, 3, 5)]


@pytest.mark.parametrize("body,field", [
    pytest.param({"messages": []}, "messages", id="empty"),
    pytest.param({"messages": [user()] * 501}, "messages", id="over-500"),
    pytest.param({"items": []}, "messages", id="missing-messages"),
    pytest.param({"messages": [], "extra": 1}, "messages", id="empty-and-unknown-field"),
    pytest.param([user()], "body", id="a-bare-list"),
])
async def test_an_invalid_batch_gets_422(env, body, field):
    async with running("ingest", env.settings) as api:
        r = await api.post("/v1/messages:batch", json=body, headers=FRONTEND)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field


async def test_a_batch_of_500_is_accepted(env):
    items = [{"chat_id": f"chat-{i % 50}", **user(f"n{i}")} for i in range(500)]
    async with running("ingest", env.settings) as api:
        r = await api.post("/v1/messages:batch", json={"messages": items}, headers=FRONTEND)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 500
    assert len(await inbound(env, 500)) == 500


async def test_metrics_count_accepted_duplicate_and_rejected_and_publish_latency(env):
    chat = cid()
    body = user()
    async with running("ingest", env.settings) as api:
        before = (await api.get("/metrics")).text
        await post(api, chat, body)
        await post(api, chat, body)
        await post(api, chat, user(""))
        after = (await api.get("/metrics")).text

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    for series, delta in [
        ('switchboard_ingest_messages_total{reason="",result="accepted"}', 1),
        ('switchboard_ingest_messages_total{reason="",result="duplicate"}', 1),
        ('switchboard_ingest_messages_total{reason="string_too_short",result="rejected"}', 1),
        ("switchboard_ingest_publish_latency_seconds_count", 1),
    ]:
        assert value(after, series) - value(before, series) >= delta, series


async def test_ingest_serves_its_asyncapi_and_openapi_documents(env):
    async with running("ingest", env.settings) as api:
        doc = (await api.get("/asyncapi.json")).json()
        openapi = (await api.get("/openapi.json")).json()
        ready = await api.get("/readyz")
    assert doc["asyncapi"].startswith("3.")
    assert doc["channels"]["chatInbound"]["address"] == env.settings.topic(TOPIC_INBOUND)
    assert {"/v1/chats/{chat_id}/messages", "/v1/messages:batch"} <= set(openapi["paths"])
    assert ready.status_code == 200, ready.text
