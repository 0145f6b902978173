"""The assigner against real Kafka and Postgres, driven as frontends (Kafka) and operators (HTTP) would."""

import uuid

from shared.events import TOPIC_INBOUND, TOPIC_LIFECYCLE, TOPIC_TIMEOUTS, AssignmentIdle, AssignmentIdlePayload, utcnow
from tests import harness
from tests.harness import Producer, eventually, operator_message, running, token, user_message


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def chat_state(env, chat_id):
    conn = await env.connect()
    try:
        return await conn.fetchrow("SELECT * FROM assigner.chats WHERE chat_id = $1", chat_id)
    finally:
        await conn.close()


async def wait_state(env, chat_id, state, timeout=20):
    async def check():
        row = await chat_state(env, chat_id)
        return row if row is not None and row["state"] == state else None

    return await eventually(check, timeout=timeout)


async def open_chat(env, kafka, chat, text="hey"):
    """A user writes into a new chat, which is then waiting in the queue."""
    await kafka.send(TOPIC_INBOUND, user_message(chat, text))
    await wait_state(env, chat, "waiting_assignment")


async def pull(api, operator):
    """The operator's pull, as JSON (the test expects one)."""
    r = await api.post("/v1/assignments/next", headers=token(operator))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_user_message_is_queued_and_an_operator_pulls_it(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        r = await api.post("/v1/assignments/next", headers=token("op-a"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["chat"]["chat_id"] == chat and body["chat"]["state"] == "assigned"
        assert [m["text"] for m in body["chat"]["messages"]] == ["hey"]
        # Retry-safe: pulling again at capacity returns the same assignment.
        again = await api.post("/v1/assignments/next", headers=token("op-a"))
        assert again.json()["assignment_id"] == body["assignment_id"]
        # Nothing else waits for another operator.
        assert (await api.post("/v1/assignments/next", headers=token("op-b"))).status_code == 204


async def test_the_user_writing_again_keeps_the_same_operator_who_sees_both_messages(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        first = await pull(api, "op-a")
        await kafka.send(TOPIC_INBOUND, user_message(chat, "how are you?"))

        async def both():
            r = await api.get("/v1/assignments/current", headers=token("op-a"))
            texts = [m["text"] for m in r.json()["chat"]["messages"]]
            return r.json() if texts == ["hey", "how are you?"] else None

        current = await eventually(both)
        assert current["assignment_id"] == first["assignment_id"]
        assert current["chat"]["state"] == "assigned" and current["chat"]["assigned_operator_id"] == "op-a"


async def test_after_answering_the_same_operator_does_not_get_the_chat_back(env):
    first_chat, other_chat = cid(), cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, first_chat, "hey")
        got = await pull(api, "op-a")
        assert got["chat"]["chat_id"] == first_chat
        await kafka.send(TOPIC_INBOUND, operator_message(first_chat, "op-a", "hello!"))
        row = await wait_state(env, first_chat, "waiting_real_user_reply")
        assert row["assigned_operator_id"] is None and row["last_operator_id"] == "op-a"
        await open_chat(env, kafka, first_chat, "thanks, one more thing")
        await open_chat(env, kafka, other_chat, "hi there")
        a = await pull(api, "op-a")
        assert a["chat"]["chat_id"] == other_chat
        b = await pull(api, "op-b")
        assert b["chat"]["chat_id"] == first_chat


async def test_an_idle_timeout_requeues_and_a_stale_one_changes_nothing(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        got = await pull(api, "op-a")
        stale = AssignmentIdle(
            event_id=uuid.uuid4(),
            chat_id=chat,
            occurred_at=utcnow(),
            producer="test",
            payload=AssignmentIdlePayload(assignment_id=uuid.uuid4(), operator_id="op-a", deadline=utcnow()),
        )
        await kafka.send(TOPIC_TIMEOUTS, stale)
        current = AssignmentIdle(
            event_id=uuid.uuid4(),
            chat_id=chat,
            occurred_at=utcnow(),
            producer="test",
            payload=AssignmentIdlePayload(
                assignment_id=uuid.UUID(got["assignment_id"]), operator_id="op-a", deadline=utcnow()
            ),
        )
        await kafka.send(TOPIC_TIMEOUTS, current)
        row = await wait_state(env, chat, "waiting_assignment")
        assert row["last_operator_id"] == "op-a"
        conn = await env.connect()
        outcomes = await conn.fetch("SELECT outcome FROM assigner.assignments WHERE chat_id = $1", chat)
        await conn.close()
        assert [r["outcome"] for r in outcomes] == ["timed_out"]
        assert (await api.post("/v1/assignments/next", headers=token("op-a"))).status_code == 204
        b = await api.post("/v1/assignments/next", headers=token("op-b"))
        assert b.json()["chat"]["chat_id"] == chat


async def test_admin_reassignment_moves_the_chat_and_ends_the_old_assignment(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        old = await pull(api, "op-a")
        r = await api.post(
            f"/v1/admin/chats/{chat}/reassign", json={"operator_id": "op-x"}, headers=token("boss", "admin")
        )
        assert r.status_code == 200, r.text
        assert r.json()["chat"]["assigned_operator_id"] == "op-x"
        seen = await api.get("/v1/assignments/current", headers=token("op-x"))
        assert seen.json()["chat"]["chat_id"] == chat
        assert (await api.get("/v1/assignments/current", headers=token("op-a"))).status_code == 204
        assignment = await api.post(f"/v1/assignments/{old['assignment_id']}/release", headers=token("op-a"))
        assert assignment.status_code == 409
        conn = await env.connect()
        row = await conn.fetchrow(
            "SELECT outcome FROM assigner.assignments WHERE assignment_id = $1", uuid.UUID(old["assignment_id"])
        )
        await conn.close()
        assert row["outcome"] == "reassigned"


async def test_another_operators_message_is_stored_for_its_author_and_changes_no_state(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        await api.post("/v1/assignments/next", headers=token("op-a"))
        await kafka.send(TOPIC_INBOUND, operator_message(chat, "op-b", "I can help too"))

        async def stored():
            conn = await env.connect()
            try:
                return await conn.fetchrow(
                    "SELECT operator_id FROM assigner.messages WHERE chat_id = $1 AND sender = 'operator'", chat
                )
            finally:
                await conn.close()

        assert (await eventually(stored))["operator_id"] == "op-b"
        row = await chat_state(env, chat)
        assert row["state"] == "assigned" and row["assigned_operator_id"] == "op-a" and row["message_count"] == 2


async def test_a_completed_chat_reopens_on_a_user_message(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        got = await pull(api, "op-a")
        r = await api.post(f"/v1/assignments/{got['assignment_id']}/complete", headers=token("op-a"))
        assert r.status_code == 200
        await wait_state(env, chat, "completed")
        await open_chat(env, kafka, chat, "back again")


async def test_release_is_refused_for_someone_elses_or_an_ended_assignment(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        got = await pull(api, "op-a")
        url = f"/v1/assignments/{got['assignment_id']}/release"
        r = await api.post(url, headers=token("op-b"))
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_assignment"
        assert (await api.post(url, headers=token("op-a"))).status_code == 200
        r = await api.post(url, headers=token("op-a"))
        assert r.status_code == 409 and r.json()["error"]["code"] == "assignment_not_active"
        r = await api.get(f"/v1/chats/{chat}", headers=token("op-b"))
        assert r.status_code == 403
        assert (await api.get("/v1/chats/nope", headers=token("boss", "admin"))).status_code == 404
        assert (await api.get("/v1/chats/nope", headers=token("op-a"))).status_code == 404


async def test_lifecycle_facts_are_published_in_per_chat_order(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat, "hey")
        await api.post("/v1/assignments/next", headers=token("op-a"))
        await kafka.send(TOPIC_INBOUND, operator_message(chat, "op-a", "hello"))
        await wait_state(env, chat, "waiting_real_user_reply")
        records = await harness.read_topic(env.settings, TOPIC_LIFECYCLE, min_records=6)
    mine = [harness.record_json(r) for r in records if r.key == chat.encode()]
    assert [e["type"] for e in mine] == [
        "message_recorded",
        "chat_queued",
        "chat_assigned",
        "message_recorded",
        "assignment_ended",
        "chat_answered",
    ]
    assert len({r.partition for r in records if r.key == chat.encode()}) == 1
