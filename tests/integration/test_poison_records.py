"""Poison records on every consumed topic, over real Kafka and Postgres.

Each kind of record that can never be applied (invalid JSON, unknown type, unknown schema
version, missing fields, a 1 MB payload, a key that is not the chat id, ...) is written to one
partition between good records. Each must reach `chat.dlq` with its original key and value and
headers naming the reason, the source topic, partition and offset; the good records after it on
the same partition must still be applied; `switchboard_dlq_records_total` counts them; and the
consumer stays up.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from shared.events import (
    TOPIC_DLQ,
    TOPIC_INBOUND,
    TOPIC_LIFECYCLE,
    TOPIC_TIMEOUTS,
    AssignmentIdle,
    AssignmentIdlePayload,
    ChatAssigned,
    ChatAssignedPayload,
    encode,
    new_event_id,
    utcnow,
)
from tests import harness
from tests.harness import eventually, running, token, user_message

PARTITION = 0
ADMIN = token("admin-1", "admin")


def poisons(good: dict, chat_id: str) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(kind, key, value, a word the reason must contain) for every kind of poison, built from a good envelope."""
    key = chat_id.encode()

    def variant(**changes) -> bytes:
        data = json.loads(json.dumps(good))
        for name, value in changes.items():
            if value is _DROP:
                data.pop(name)
            else:
                data[name] = value
        data["event_id"] = str(uuid.uuid4())
        return json.dumps(data).encode()

    huge = json.loads(json.dumps(good))
    huge["event_id"] = str(uuid.uuid4())
    huge["payload"]["padding"] = "x" * 1_000_000
    return [
        ("invalid_json", key, b'{"event_id": "', "JSON"),
        ("not_utf8", key, b"\xff\xfe\x00garbage", "JSON"),
        ("not_an_object", key, b"[1, 2, 3]", "object"),
        ("tombstone", key, None, "empty"),
        ("unknown_type", key, variant(type="chat_exploded"), "type"),
        ("unknown_schema_version", key, variant(schema_version=2), "schema_version"),
        ("missing_payload", key, variant(payload=_DROP), "payload"),
        ("missing_event_id", key, _without_event_id(good), "event_id"),
        ("one_megabyte", key, json.dumps(huge).encode(), "padding"),
        ("wrong_key", b"some-other-chat", variant(), "key"),
        ("no_key", None, variant(), "key"),
    ]


class _Drop:
    pass


_DROP = _Drop()


def _without_event_id(good: dict) -> bytes:
    data = json.loads(json.dumps(good))
    data.pop("event_id")
    return json.dumps(data).encode()


async def produce(settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> list[int]:
    """Write raw records to one partition, in order; returns their offsets."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        offsets = []
        for key, value in records:
            meta = await producer.send_and_wait(settings.topic(topic), value=value, key=key, partition=PARTITION)
            offsets.append(meta.offset)
        return offsets
    finally:
        await producer.stop()


async def dead_letters(settings, expected: int) -> list:
    """The DLQ records, once at least `expected` arrived (and a moment later, to catch extras)."""
    records = await harness.read_topic(settings, TOPIC_DLQ, min_records=expected, timeout=30)
    assert len(records) >= expected, f"only {len(records)} of {expected} poison records reached the DLQ"
    return records


def headers_of(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def check_dead_letters(settings, topic: str, sent: list, offsets: list[int], dlq: list, group: str) -> None:
    """Each poison is on the DLQ once for `group`, unchanged, with reason and origin."""
    mine = [r for r in dlq if headers_of(r).get("dlq.consumer_group") == settings.group(group)]
    by_offset = {}
    for r in mine:
        h = headers_of(r)
        assert h["dlq.source_topic"] == settings.topic(topic)
        assert h["dlq.source_partition"] == str(PARTITION)
        by_offset.setdefault(int(h["dlq.source_offset"]), []).append(r)
    assert sorted(by_offset) == sorted(offsets), (sorted(by_offset), offsets)
    for (kind, key, value, word), offset in zip(sent, offsets):
        [record] = by_offset[offset]
        reason = headers_of(record)["dlq.reason"]
        assert word.lower() in reason.lower(), f"{kind}: reason {reason!r} does not mention {word!r}"
        assert record.key == key, kind
        assert record.value == value, kind


def dlq_metric(text: str, group: str, topic: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "switchboard_dlq_records":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"group": group, "topic": topic}:
                    return sample.value
    return 0.0


async def assert_assigner_dead_lettered(api, settings, topic: str, sent: list, offsets: list[int]) -> None:
    """Every poison record sent to `topic` is on chat.dlq once, counted, and the assigner is still ready."""
    dlq = await dead_letters(settings, len(sent))
    check_dead_letters(settings, topic, sent, offsets, dlq, "assigner")
    metrics = (await api.get("/metrics")).text
    assert dlq_metric(metrics, settings.group("assigner"), topic) == len(sent)
    assert (await api.get("/readyz")).status_code == 200


async def test_poison_on_chat_inbound_goes_to_the_dlq_and_later_messages_still_apply(env):
    settings = env.settings
    before = user_message("chat-p1", text="first", message_id="m-1")
    after = user_message("chat-p1", text="after the poison", message_id="m-2")
    other = user_message("chat-p2", text="another chat, same partition", message_id="m-3")
    sent = poisons(json.loads(encode(before)), "chat-p1")
    async with running("assigner", settings) as api:
        await produce(settings, TOPIC_INBOUND, [(b"chat-p1", encode(before))])
        offsets = await produce(settings, TOPIC_INBOUND, [(k, v) for _, k, v, _ in sent])
        await produce(settings, TOPIC_INBOUND, [(b"chat-p1", encode(after)), (b"chat-p2", encode(other))])

        async def applied():
            r1 = await api.get("/v1/chats/chat-p1", headers=ADMIN)
            r2 = await api.get("/v1/chats/chat-p2", headers=ADMIN)
            return r1.status_code == 200 and r1.json()["message_count"] == 2 and r2.status_code == 200

        await eventually(applied, timeout=30)
        chat = (await api.get("/v1/chats/chat-p1", headers=ADMIN)).json()
        assert [m["message_id"] for m in chat["messages"]] == ["m-1", "m-2"]
        await assert_assigner_dead_lettered(api, settings, TOPIC_INBOUND, sent, offsets)


async def test_a_message_postgres_cannot_store_goes_to_the_dlq_instead_of_stalling_its_partition(env):
    settings = env.settings
    # Valid JSON, a valid envelope in every other respect; PostgreSQL cannot store U+0000 in text.
    nul = encode(user_message("chat-nul", text="a NUL <here> inside", message_id="m-nul")).replace(
        b"<here>", b"\\u0000"
    )
    after = user_message("chat-nul2", text="after it", message_id="m-after")
    async with running("assigner", settings) as api:
        offsets = await produce(settings, TOPIC_INBOUND, [(b"chat-nul", nul), (b"chat-nul2", encode(after))])

        async def applied():
            return (await api.get("/v1/chats/chat-nul2", headers=ADMIN)).status_code == 200

        await eventually(applied, timeout=30)
        [record] = await dead_letters(settings, 1)
        assert headers_of(record)["dlq.source_offset"] == str(offsets[0])
        assert record.value == nul and b"\\u0000" in nul
        assert headers_of(record)["dlq.reason"]
        assert (await api.get("/v1/chats/chat-nul", headers=ADMIN)).status_code == 404


async def test_poison_on_chat_timeouts_goes_to_the_dlq_and_a_later_timeout_still_applies(env):
    settings = env.settings
    async with running("assigner", settings) as api:
        await produce(settings, TOPIC_INBOUND, [(b"chat-t1", encode(user_message("chat-t1", message_id="m-1")))])

        async def pulled():
            r = await api.post("/v1/assignments/next", headers=token("op-1"))
            return r.json() if r.status_code == 200 else None

        assignment = await eventually(pulled, timeout=30)
        now = utcnow()
        idle = AssignmentIdle(
            event_id=new_event_id(),
            chat_id="chat-t1",
            occurred_at=now,
            producer="test",
            payload=AssignmentIdlePayload(
                assignment_id=assignment["assignment_id"], operator_id="op-1", deadline=now - timedelta(seconds=1)
            ),
        )
        sent = poisons(json.loads(encode(idle)), "chat-t1")
        offsets = await produce(settings, TOPIC_TIMEOUTS, [(k, v) for _, k, v, _ in sent])
        await produce(settings, TOPIC_TIMEOUTS, [(b"chat-t1", encode(idle))])

        async def timed_out():
            r = await api.get("/v1/chats/chat-t1", headers=ADMIN)
            return r.json()["state"] == "waiting_assignment"

        await eventually(timed_out, timeout=30)
        chat = (await api.get("/v1/chats/chat-t1", headers=ADMIN)).json()
        assert chat["last_operator_id"] == "op-1" and chat["assigned_operator_id"] is None
        await assert_assigner_dead_lettered(api, settings, TOPIC_TIMEOUTS, sent, offsets)


async def test_poison_on_chat_lifecycle_goes_to_the_dlq_once_per_consumer_group_and_later_facts_still_apply(env):
    settings = env.settings
    now = utcnow()

    def assigned(chat_id: str, operator: str) -> ChatAssigned:
        return ChatAssigned(
            event_id=new_event_id(),
            chat_id=chat_id,
            occurred_at=now,
            producer="assigner",
            payload=ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id=operator, assigned_at=now, via="pull"),
        )

    first, later = assigned("chat-l1", "op-7"), assigned("chat-l2", "op-7")
    sent = poisons(json.loads(encode(first)), "chat-l1")
    async with running("idle_monitor", settings) as monitor, running("stats", settings) as stats:
        await produce(settings, TOPIC_LIFECYCLE, [(b"chat-l1", encode(first))])
        offsets = await produce(settings, TOPIC_LIFECYCLE, [(k, v) for _, k, v, _ in sent])
        await produce(settings, TOPIC_LIFECYCLE, [(b"chat-l2", encode(later))])

        async def both_applied():
            r = await stats.get("/v1/operators/op-7/stats", headers=ADMIN)
            armed = await monitor.get("/v1/admin/timers", headers=ADMIN)
            return (
                r.status_code == 200
                and r.json()["assignments"] == 2
                and armed.status_code == 200
                and armed.json()["armed"] == 2
            )

        await eventually(both_applied, timeout=30)
        timers = (await monitor.get("/v1/admin/timers", headers=ADMIN)).json()["timers"]
        assert {t["assignment_id"] for t in timers} == {
            str(first.payload.assignment_id),
            str(later.payload.assignment_id),
        }
        dlq = await dead_letters(settings, 2 * len(sent))
        for group in ("idle_monitor", "stats"):
            check_dead_letters(settings, TOPIC_LIFECYCLE, sent, offsets, dlq, group)
        metrics = (await stats.get("/metrics")).text
        assert dlq_metric(metrics, settings.group("stats"), TOPIC_LIFECYCLE) == len(sent)
        assert dlq_metric(metrics, settings.group("idle_monitor"), TOPIC_LIFECYCLE) == len(sent)
        assert (await monitor.get("/readyz")).status_code == 200
        assert (await stats.get("/readyz")).status_code == 200


async def test_a_nul_character_posted_to_ingest_never_stalls_the_chats_behind_it(env):
    settings = env.settings
    frontend = token("web", "frontend")
    others = [f"chat-after-{i}" for i in range(12)]  # enough chats to land on every partition
    async with running("assigner", settings) as api, running("ingest", settings) as ingest:
        r = await ingest.post(
            "/v1/chats/chat-nul/messages",
            headers=frontend,
            json={"message_id": "m-nul", "sender": "user", "text": "NUL \u0000 here"},
        )
        assert r.status_code in (202, 422), r.text
        for chat in others:
            r = await ingest.post(
                f"/v1/chats/{chat}/messages",
                headers=frontend,
                json={"message_id": "m-1", "sender": "user", "text": "hello"},
            )
            assert r.status_code == 202, r.text

        async def all_applied():
            codes = [(await api.get(f"/v1/chats/{chat}", headers=ADMIN)).status_code for chat in others]
            return all(c == 200 for c in codes)

        await eventually(all_applied, timeout=30)
