"""Ingest over HTTP against real Kafka and Postgres: accepted events, duplicates, batches, metrics.

Validation, size limits and auth need neither: they are unit tests (tests/unit/test_ingest_api.py).
"""

import asyncio
import uuid

from shared import asyncapi
from shared.events import ALL_TOPICS, INBOUND, TOPIC_INBOUND
from tests.harness import read_topic, record_json, running, token

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
        body = {
            "message_id": mid(),
            "sender": "operator",
            "operator_id": "op-7",
            "text": "hello",
            "sent_at": "2026-03-01T10:00:00+02:00",
        }
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
    # The document FastStream generates from what ingest declares on its broker (tests/unit/test_asyncapi.py
    # checks it against the AsyncAPI 3.0.0 schema); its addresses are logical, without the test's prefix.
    assert doc == asyncapi.service_document(api.app.state.broker, "ingest", env.settings)
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "Switchboard ingest"
    assert {c["address"] for c in doc["channels"].values()} <= set(ALL_TOPICS)
    assert doc["channels"]["chatInbound"]["address"] == TOPIC_INBOUND  # its publisher, declared in the wiring
    assert {"/v1/chats/{chat_id}/messages", "/v1/messages:batch"} <= set(openapi["paths"])
    assert ready.status_code == 200, ready.text
