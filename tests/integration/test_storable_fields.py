"""What ingest accepts the assigner can store (issue 13, item 2), over real Kafka and Postgres.

A `202` means "will be applied": a `sent_at` the assigner cannot store (year 1 at +14:00, year 9999
at -14:00) is refused at ingest with a 422 naming the field (a unit test: tests/unit/test_ingest_api.py),
and the same window is enforced by the event model, so such a record produced straight to
`chat.inbound` goes to the DLQ with a reason instead of failing in Postgres. What Postgres still refuses (class 22) goes to the DLQ alone while the
rest of its poll is applied.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import asyncpg
import pytest

from shared import migrations
from shared.events import TOPIC_INBOUND, encode, utcnow
from switchboard import services as registry
from tests import harness
from tests.harness import eventually, running, token, user_message
from tests.integration.test_poison_records import dead_letters, dlq_metric, headers_of, produce

FRONTEND = token("web", "frontend")
ADMIN = token("admin-1", "admin")

OUTSIDE = [
    pytest.param("0001-01-01T00:00:00+14:00", id="year-1-at-plus-14"),
    pytest.param("9999-12-31T23:59:59-14:00", id="year-9999-at-minus-14"),
    pytest.param("1999-12-31T23:59:59Z", id="just-before-2000"),
    pytest.param("future-2h", id="two-hours-ahead"),
]


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def test_every_sent_at_ingest_accepts_at_the_edges_of_the_window_is_stored_by_the_assigner(env):
    edges = {
        "earliest": "2000-01-01T00:00:00Z",
        "earliest-at-plus-14": "2000-01-01T14:00:00+14:00",
        "ahead-at-minus-14": (utcnow() + timedelta(minutes=50)).astimezone(timezone(timedelta(hours=-14))).isoformat(),
    }
    chats = {name: cid() for name in edges}
    async with running("ingest", env.settings) as ingest, running("assigner", env.settings) as assigner:
        for name, sent_at in edges.items():
            body = {"message_id": f"m-{name}", "sender": "user", "text": "hi", "sent_at": sent_at}
            r = await ingest.post(f"/v1/chats/{chats[name]}/messages", json=body, headers=FRONTEND)
            assert r.status_code == 202, (name, r.text)

        async def stored():
            got = {}
            for name, chat in chats.items():
                r = await assigner.get(f"/v1/chats/{chat}", headers=ADMIN)
                if r.status_code != 200:
                    return None
                got[name] = r.json()["messages"][0]["sent_at"]
            return got

        got = await eventually(stored, timeout=30)
    for name, sent_at in edges.items():
        expected = datetime.fromisoformat(sent_at.replace("Z", "+00:00"))
        assert datetime.fromisoformat(got[name].replace("Z", "+00:00")) == expected, name
    assert await harness.read_all(env.settings, "chat.dlq") == []


@pytest.mark.parametrize("sent_at", OUTSIDE[:2])
async def test_a_record_with_sent_at_outside_the_window_goes_to_the_dlq_naming_the_field(env, sent_at):
    settings = env.settings
    good = json.loads(encode(user_message("chat-w1", text="out of range", message_id="m-1")))
    good["payload"]["sent_at"] = sent_at
    bad = json.dumps(good).encode()
    after = user_message("chat-w2", text="after it", message_id="m-2")
    async with running("assigner", settings) as api:
        offsets = await produce(settings, TOPIC_INBOUND, [(b"chat-w1", bad), (b"chat-w2", encode(after))])

        async def applied():
            return (await api.get("/v1/chats/chat-w2", headers=ADMIN)).status_code == 200

        await eventually(applied, timeout=30)
        [record] = await dead_letters(settings, 1)
        reason = headers_of(record)["dlq.reason"]
        assert headers_of(record)["dlq.source_offset"] == str(offsets[0])
        assert "payload.sent_at" in reason and "2000-01-01" in reason, reason
        assert (await api.get("/v1/chats/chat-w1", headers=ADMIN)).status_code == 404


@pytest.fixture
async def latin1_env(env):
    """The test's topics with a database in LATIN1: Postgres itself refuses text outside Latin-1 (22P05)."""
    name = f"sb_l1_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(harness.with_db(env.database_url, "postgres"))
    try:
        await admin.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    finally:
        await admin.close()
    url = harness.with_db(env.database_url, name)
    conn = await asyncpg.connect(url)
    try:
        for service in registry.NAMES:
            if registry.has_migrations(service):
                await migrations.apply(conn, registry.schema(service), registry.migrations_dir(service))
    finally:
        await conn.close()
    yield env.with_settings(database_url=url)
    await harness.drop_database(env.database_url, urlparse(url).path.lstrip("/"))


async def test_a_record_postgres_refuses_goes_to_the_dlq_alone_and_the_rest_of_its_poll_applies(latin1_env):
    settings = latin1_env
    # Each record passes the event model; Postgres refuses the second one's text (no Latin-1 form),
    # so the poll's one transaction fails with a DataError and the consumer applies record by record.
    first = user_message("chat-l1", text="plain text", message_id="m-1")
    refused = user_message("chat-l2", text="\u65e5\u672c\u8a9e", message_id="m-2")
    last = user_message("chat-l3", text="caf\u00e9", message_id="m-3")
    offsets = await produce(settings, TOPIC_INBOUND, [(e.chat_id.encode(), encode(e)) for e in (first, refused, last)])
    async with running("assigner", settings) as api:  # started after producing: all three in one poll

        async def applied():
            codes = [(await api.get(f"/v1/chats/{c}", headers=ADMIN)).status_code for c in ("chat-l1", "chat-l3")]
            return codes == [200, 200]

        await eventually(applied, timeout=30)
        dlq = await dead_letters(settings, 1)
        assert len(dlq) == 1, [headers_of(r) for r in dlq]
        [record] = dlq
        h = headers_of(record)
        assert h["dlq.source_offset"] == str(offsets[1])
        assert h["dlq.reason"].startswith("database refused the record"), h["dlq.reason"]
        assert record.value == encode(refused)
        assert (await api.get("/v1/chats/chat-l2", headers=ADMIN)).status_code == 404
        last_chat = (await api.get("/v1/chats/chat-l3", headers=ADMIN)).json()
        assert [m["text"] for m in last_chat["messages"]] == ["caf\u00e9"]
        metrics = (await api.get("/metrics")).text
        assert dlq_metric(metrics, settings.group("assigner"), TOPIC_INBOUND) == 1
        assert (await api.get("/readyz")).status_code == 200


async def test_text_with_a_lone_surrogate_is_refused_at_ingest_and_dead_lettered_from_kafka(env):
    # "\ud800" is valid JSON syntax to Python's json module but no Unicode text: Postgres could not store it.
    body = b'{"message_id": "m-1", "sender": "user", "text": "half a pair: \\ud800"}'
    async with running("ingest", env.settings) as api:
        r = await api.post(f"/v1/chats/{cid()}/messages", content=body, headers=FRONTEND)
        batch = await api.post(
            "/v1/messages:batch", headers=FRONTEND, content=b'{"messages": [' + body[:-1] + b', "chat_id": "c-1"}]}'
        )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["type"] == "json_invalid", r.text
    assert batch.status_code == 422, batch.text
    settings = env.settings
    raw = encode(user_message("chat-s1", text="<here>", message_id="m-1")).replace(b"<here>", b"\\ud800")
    after = user_message("chat-s2", text="after it", message_id="m-2")
    async with running("assigner", settings) as api:
        offsets = await produce(settings, TOPIC_INBOUND, [(b"chat-s1", raw), (b"chat-s2", encode(after))])

        async def applied():
            return (await api.get("/v1/chats/chat-s2", headers=ADMIN)).status_code == 200

        await eventually(applied, timeout=30)
        [record] = await dead_letters(settings, 1)
        assert headers_of(record)["dlq.source_offset"] == str(offsets[0]) and record.value == raw
        assert (await api.get("/v1/chats/chat-s1", headers=ADMIN)).status_code == 404
