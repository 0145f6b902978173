"""Ingest when a step fails: the key stays the arbiter, a retry publishes the same event, the assigner applies it once."""

import uuid

from services.ingest import domain
from services.ingest.publisher import Publisher
from shared.events import TOPIC_INBOUND, new_event_id, utcnow
from shared.kafka.broker import make_broker
from tests.harness import eventually, read_all, read_topic, record_json, running, token

FRONTEND = token("web", "frontend")


class FailingPublisher:
    """Stands in for Kafka not acknowledging: nothing is sent, every record times out."""

    def __init__(self):
        self.calls = 0

    async def publish(self, records):
        self.calls += 1
        return [TimeoutError("simulated: Kafka did not acknowledge")] * len(records)


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def key_row(env, chat_id: str, message_id: str):
    conn = await env.connect()
    try:
        return await conn.fetchrow(
            "SELECT event_id, envelope, acked_at FROM ingest.message_keys WHERE chat_id = $1 AND message_id = $2",
            chat_id,
            message_id,
        )
    finally:
        await conn.close()


async def test_a_failed_publish_answers_503_and_the_retry_publishes_the_stored_event_once(env):
    chat, body = cid(), {"message_id": "m-1", "sender": "user", "text": "hey"}
    async with running("ingest", env.settings) as api:
        real = api.app.state.publisher
        api.app.state.publisher = FailingPublisher()
        failed = await api.post(f"/v1/chats/{chat}/messages", json=body, headers=FRONTEND)
        assert failed.status_code == 503
        assert failed.headers["retry-after"].isdigit()
        assert failed.json()["error"]["code"] == "kafka_unavailable"
        stored = await key_row(env, chat, "m-1")
        assert stored["acked_at"] is None and stored["envelope"] is not None  # claimed, not accepted
        assert await read_all(env.settings, TOPIC_INBOUND) == []

        api.app.state.publisher = real
        retried = await api.post(f"/v1/chats/{chat}/messages", json=body, headers=FRONTEND)
        assert retried.status_code == 202
        # The first request was never accepted, so this is the accepting one.
        assert retried.json() == {"event_id": str(stored["event_id"]), "duplicate": False}
        again = await api.post(f"/v1/chats/{chat}/messages", json=body, headers=FRONTEND)
        assert again.json() == {"event_id": str(stored["event_id"]), "duplicate": True}
    [record] = await read_all(env.settings, TOPIC_INBOUND)  # ingest stopped: its producer flushed
    assert record.value.decode() == stored["envelope"]  # the exact record claimed before the failure
    acked = await key_row(env, chat, "m-1")
    assert acked["acked_at"] is not None and acked["envelope"] is None


async def test_a_crash_after_kafka_acked_but_before_the_ack_was_recorded_republishes_the_same_event(env):
    """Steps 1 and 2 of the use case done by an instance that then died; a retry goes to a live instance."""
    chat = cid()
    message = domain.MessageIn(message_id="m-1", sender="user", text="hey")
    draft = domain.draft(chat, message, new_event_id(), utcnow())
    async with running("ingest", env.settings) as api:
        store = api.app.state.store
        claims = await store.claim([draft])
        dead = Publisher(env.settings, make_broker(env.settings, "ingest"))
        await dead.start()
        assert await dead.publish([(chat, claims[draft.key].envelope)]) == [None]
        await dead.stop()  # ... and the process dies before mark_acked

        retried = await api.post(
            f"/v1/chats/{chat}/messages", json=message.model_dump(exclude_none=True), headers=FRONTEND
        )
    assert retried.status_code == 202
    assert retried.json()["event_id"] == str(draft.event_id)
    records = await read_topic(env.settings, TOPIC_INBOUND, min_records=2)
    # At least once on Kafka, but one event: same id, same bytes.
    assert [record_json(r)["event_id"] for r in records] == [str(draft.event_id)] * 2
    assert records[0].value == records[1].value


async def test_the_assigner_applies_a_message_retried_after_a_failure_between_steps_once(env):
    chat, body = cid(), {"message_id": "m-1", "sender": "user", "text": "hey"}
    async with running("ingest", env.settings) as ingest, running("assigner", env.settings):
        store = ingest.app.state.store
        # Crash between steps: key stored and record published, ack never recorded.
        message = domain.MessageIn(**body)
        draft = domain.draft(chat, message, new_event_id(), utcnow())
        claims = await store.claim([draft])
        await ingest.app.state.publisher.publish([(chat, claims[draft.key].envelope)])
        # The frontend, having seen no answer, retries twice.
        first = await ingest.post(f"/v1/chats/{chat}/messages", json=body, headers=FRONTEND)
        second = await ingest.post(f"/v1/chats/{chat}/messages", json=body, headers=FRONTEND)
        assert first.json()["event_id"] == second.json()["event_id"] == str(draft.event_id)
        # A later message of the chat: once it is applied, both copies before it were consumed.
        await ingest.post(f"/v1/chats/{chat}/messages", json={**body, "message_id": "m-2"}, headers=FRONTEND)
        conn = await env.connect()
        try:

            async def both_consumed():
                row = await conn.fetchrow("SELECT message_count FROM assigner.chats WHERE chat_id = $1", chat)
                return row if row is not None and row["message_count"] >= 2 else None

            chat_row = await eventually(both_consumed)
            messages = await conn.fetch(
                "SELECT message_id FROM assigner.messages WHERE chat_id = $1 ORDER BY seq", chat
            )
        finally:
            await conn.close()
    copies = await read_topic(env.settings, TOPIC_INBOUND, min_records=3)
    assert [record_json(r)["payload"]["message_id"] for r in copies] == ["m-1", "m-1", "m-2"]
    assert chat_row["message_count"] == 2
    # Applied once: one stored message m-1, counted once, though Kafka carried it twice.
    assert [m["message_id"] for m in messages] == ["m-1", "m-2"]


async def test_postgres_unavailable_answers_503_and_publishes_nothing(env):
    async with running("ingest", env.settings) as api:
        await api.app.state.store.pool.close()
        r = await api.post(
            f"/v1/chats/{cid()}/messages", json={"message_id": "m-1", "sender": "user", "text": "x"}, headers=FRONTEND
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "postgres_unavailable" and "retry-after" in r.headers
        ready = await api.get("/readyz")
        assert ready.status_code == 503
    assert await read_all(env.settings, TOPIC_INBOUND) == []
