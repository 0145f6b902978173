"""Ingest's HTTP validation and auth over the app built with fakes: no Kafka, no Postgres.

What needs the broker or the idempotency table (events on chat.inbound, duplicates across
instances, metrics of publishing) stays in tests/integration/test_ingest_api.py.
"""

import time
import uuid
from datetime import timedelta

import jwt
import pytest

from services.ingest.domain import MAX_MESSAGE_BYTES
from shared.events import utcnow
from tests import fakes
from tests.harness import TEST_SECRET, token

FRONTEND = token("web", "frontend")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


def mid() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def user(text: str = "hey", message_id: str | None = None, **extra) -> dict:
    return {"message_id": mid() if message_id is None else message_id, "sender": "user", "text": text, **extra}


async def post(api, chat_id: str, body, headers=FRONTEND):
    return await api.post(f"/v1/chats/{chat_id}/messages", json=body, headers=headers)


def ingest(**fakes_):
    """Ingest over an in-memory idempotency store and a publisher that keeps what it is given."""
    store, publisher = fakes.IngestStore(), fakes.IngestPublisher()
    app = fakes.build("ingest", **{"store": store, "publisher": publisher, **fakes_})
    return fakes.serving(app, "ingest"), publisher


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
    pytest.param(
        "c-1",
        {"message_id": "m-1", "sender": "operator", "text": "hi"},
        "operator_id",
        id="operator-without-operator-id",
    ),
    pytest.param("c-1", user(operator_id="op-1"), "operator_id", id="user-with-operator-id"),
    pytest.param(
        "c-1",
        {"message_id": "m-1", "sender": "operator", "operator_id": "op\t1", "text": "hi"},
        "operator_id",
        id="operator-id-bad-char",
    ),
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
async def test_an_invalid_message_gets_422_naming_the_field_and_nothing_is_published(chat_id, body, field):
    serving, publisher = ingest()
    async with serving as api:
        r = await post(api, chat_id, body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert publisher.published == []


async def test_a_body_that_is_not_json_gets_422():
    serving, _ = ingest()
    async with serving as api:
        r = await api.post("/v1/chats/c-1/messages", content=b"{not json", headers=FRONTEND)
        empty = await api.post("/v1/chats/c-1/messages", content=b"", headers=FRONTEND)
    assert r.status_code == empty.status_code == 422
    assert r.json()["error"]["details"][0]["type"] == "json_invalid"


async def test_an_oversized_body_gets_413_with_or_without_content_length():
    big = b'{"message_id": "m-1", "sender": "user", "text": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'

    async def chunked():
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    serving, _ = ingest()
    async with serving as api:
        with_length = await api.post("/v1/chats/c-1/messages", content=big, headers=FRONTEND)
        without_length = await api.post("/v1/chats/c-1/messages", content=chunked(), headers=FRONTEND)
        huge_batch = await api.post(
            "/v1/messages:batch", content=b"[" + b" " * (40 * 1024 * 1024) + b"]", headers=FRONTEND
        )
    assert "content-length" in with_length.request.headers
    assert "content-length" not in without_length.request.headers
    for r in (with_length, without_length, huge_batch):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"


def _expired_token() -> dict:
    now = int(time.time())
    claims = {"sub": "web", "role": "frontend", "iat": now - 7200, "exp": now - 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, TEST_SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize(
    "headers,status,code",
    [
        pytest.param({}, 401, "missing_token", id="missing"),
        pytest.param({"Authorization": "Basic d2ViOnB3"}, 401, "missing_token", id="not-bearer"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, 401, "invalid_token", id="garbage"),
        pytest.param(
            token("web", "frontend", secret="another-secret-0123456789-abcdefghijkl"),
            401,
            "invalid_token",
            id="wrong-signature",
        ),
        pytest.param(_expired_token(), 401, "token_expired", id="expired"),
        pytest.param(token("boss", "admin"), 403, "forbidden_role", id="admin-role"),
    ],
)
async def test_auth_is_checked_before_the_body(headers, status, code):
    # Neither store nor publisher may be reached: `fakes.Untouched` fails any request that does.
    async with fakes.serving(fakes.build("ingest")) as api:
        valid = await post(api, "c-1", user(), headers=headers)
        invalid = await api.post("/v1/chats/c-1/messages", content=b"{broken", headers=headers)
        bad_chat = await post(api, "bad$chat", user(""), headers=headers)
        batch = await api.post("/v1/messages:batch", content=b"[]", headers=headers)
    for r in (valid, invalid, bad_chat, batch):
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code


async def test_an_operator_token_may_post_only_its_own_operator_messages():
    chat = cid()
    me = token("op-1", "operator")
    serving, publisher = ingest()
    async with serving as api:
        own = await post(
            api, chat, {"message_id": mid(), "sender": "operator", "operator_id": "op-1", "text": "hi"}, headers=me
        )
        other = await post(
            api, chat, {"message_id": mid(), "sender": "operator", "operator_id": "op-2", "text": "x"}, headers=me
        )
        as_user = await post(api, chat, user("pretending"), headers=me)
        batch = await api.post("/v1/messages:batch", json={"messages": []}, headers=me)
    assert own.status_code == 202, own.text
    assert other.status_code == 403 and other.json()["error"]["code"] == "operator_mismatch"
    assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "operator_mismatch"
    assert batch.status_code == 403 and batch.json()["error"]["code"] == "forbidden_role"
    assert [chat_id for chat_id, _ in publisher.published] == [chat]


@pytest.mark.parametrize(
    "body,field",
    [
        pytest.param({"messages": []}, "messages", id="empty"),
        pytest.param({"messages": [user()] * 501}, "messages", id="over-500"),
        pytest.param({"items": []}, "messages", id="missing-messages"),
        pytest.param({"messages": [], "extra": 1}, "messages", id="empty-and-unknown-field"),
        pytest.param([user()], "body", id="a-bare-list"),
    ],
)
async def test_an_invalid_batch_gets_422(body, field):
    serving, publisher = ingest()
    async with serving as api:
        r = await api.post("/v1/messages:batch", json=body, headers=FRONTEND)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field
    assert publisher.published == []


OUTSIDE = [
    pytest.param("0001-01-01T00:00:00+14:00", id="year-1-at-plus-14"),
    pytest.param("9999-12-31T23:59:59-14:00", id="year-9999-at-minus-14"),
    pytest.param("1999-12-31T23:59:59Z", id="just-before-2000"),
    pytest.param("future-2h", id="two-hours-ahead"),
]


def _when(value: str) -> str:
    return (utcnow() + timedelta(hours=2)).isoformat() if value == "future-2h" else value


@pytest.mark.parametrize("sent_at", OUTSIDE)
async def test_ingest_refuses_a_sent_at_outside_the_window_with_422_naming_the_field(sent_at):
    # What the assigner could not store (tests/integration/test_storable_fields.py) never gets a 202.
    body = {"message_id": "m-1", "sender": "user", "text": "hi", "sent_at": _when(sent_at)}
    serving, publisher = ingest()
    async with serving as api:
        single = await api.post(f"/v1/chats/{cid()}/messages", json=body, headers=FRONTEND)
        batch = await api.post("/v1/messages:batch", json={"messages": [{**body, "chat_id": cid()}]}, headers=FRONTEND)
    assert single.status_code == 422, single.text
    error = single.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "sent_at"
    assert error["message"].startswith("sent_at: ") and "2000-01-01" in error["message"]
    assert batch.status_code == 200, batch.text
    [item] = batch.json()["results"]
    assert item["status"] == 422 and item["error"]["details"][0]["field"] == "sent_at"
    assert publisher.published == []
