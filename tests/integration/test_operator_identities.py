"""Real identity providers' subjects as operator ids, end to end over real Kafka and Postgres.

An operator whose token `sub` is an email, a UUID, `auth0|abc`, text with `/` and `%`, 255
characters or non-ASCII letters pulls a chat, replies through ingest, is reassigned a chat,
releases and completes, and reads its own figures at `/v1/operators/{URL-encoded id}/stats`.
(The stats path refusing an id no operator could have is a unit test: tests/unit/test_stats_api.py.)
"""

import uuid
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.assigner.api import domain_error
from services.assigner.domain import InvalidCommand
from services.assigner.usecases import Assigner, OperatorCommand
from shared.db import create_pool
from shared.events import TOPIC_INBOUND
from tests.harness import Producer, eventually, running, token, user_message

SUBJECTS = {
    "email": "alice.o'hara+support@example.com",
    "uuid": str(uuid.UUID("3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b")),
    "provider": "auth0|abc",
    "slash-percent": "a/b%2Fc",
    "255-chars": "é" + "x" * 253 + "/",
    "unicode": "Łukasz Żółć 操作员 (night shift)",
}
ADMIN = token("boss", "admin")
FRONTEND = token("web", "frontend")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def chat_row(env, chat_id):
    conn = await env.connect()
    try:
        return await conn.fetchrow("SELECT * FROM assigner.chats WHERE chat_id = $1", chat_id)
    finally:
        await conn.close()


async def in_state(env, chat_id, state):
    row = await chat_row(env, chat_id)
    return row if row is not None and row["state"] == state else None


def stats_path(operator_id: str) -> str:
    return f"/v1/operators/{quote(operator_id, safe='')}/stats"


@pytest.mark.parametrize("sub", SUBJECTS.values(), ids=SUBJECTS.keys())
async def test_an_operator_with_a_real_world_subject_pulls_replies_via_ingest_and_reads_its_stats(env, sub):
    me = token(sub)
    a, b = cid(), cid()
    async with (
        running("assigner", env.settings) as assigner,
        running("ingest", env.settings) as ingest,
        running("stats", env.settings) as stats,
    ):
        for chat in (a, b):
            r = await ingest.post(
                f"/v1/chats/{chat}/messages",
                headers=FRONTEND,
                json={"message_id": f"u-{chat}", "sender": "user", "text": "hello?"},
            )
            assert r.status_code == 202, r.text
        for chat in (a, b):
            await eventually(lambda c=chat: in_state(env, c, "waiting_assignment"))

        # pull: a chat assigned to exactly this subject (the two chats sit on different partitions, so
        # either may have been queued first)
        pulled = await assigner.post("/v1/assignments/next", headers=me)
        assert pulled.status_code == 200, pulled.text
        assert pulled.json()["chat"]["assigned_operator_id"] == sub
        first = pulled.json()["chat"]["chat_id"]
        second = next(c for c in (a, b) if c != first)
        current = await assigner.get("/v1/assignments/current", headers=me)
        assert current.status_code == 200 and current.json()["assignment_id"] == pulled.json()["assignment_id"]

        # the operator's reply through ingest, as the console sends it, answers the chat and frees them
        reply = await ingest.post(
            f"/v1/chats/{first}/messages",
            headers=me,
            json={"message_id": "op-reply-1", "sender": "operator", "operator_id": sub, "text": "how can I help?"},
        )
        assert reply.status_code == 202, reply.text
        answered = await eventually(lambda: in_state(env, first, "waiting_real_user_reply"))
        assert answered["last_operator_id"] == sub

        # release, then an admin reassigns it to the same subject, who completes it
        again = await assigner.post("/v1/assignments/next", headers=me)
        assert again.status_code == 200 and again.json()["chat"]["chat_id"] == second
        released = await assigner.post(f"/v1/assignments/{again.json()['assignment_id']}/release", headers=me)
        assert released.status_code == 200, released.text
        moved = await assigner.post(f"/v1/admin/chats/{second}/reassign", json={"operator_id": sub}, headers=ADMIN)
        assert moved.status_code == 200, moved.text
        assert moved.json()["chat"]["assigned_operator_id"] == sub
        done = await assigner.post(f"/v1/assignments/{moved.json()['assignment_id']}/complete", headers=me)
        assert done.status_code == 200, done.text

        # stats at the URL-encoded id: the operator's own token and an admin's
        async def counted():
            r = await stats.get(stats_path(sub), headers=me)
            assert r.status_code == 200, r.text
            return r.json() if r.json()["assignments"] == 3 and r.json()["answered"] == 1 else None

        figures = await eventually(counted)
        assert figures["operator_id"] == sub
        assert {k: figures[k] for k in ("messages_sent", "chats_handled", "released")} == {
            "messages_sent": 1,
            "chats_handled": 1,
            "released": 1,
        }
        by_admin = await stats.get(stats_path(sub), headers=ADMIN)
        assert by_admin.status_code == 200 and by_admin.json() == figures
        listed = (await stats.get("/v1/stats/operators", headers=ADMIN)).json()["operators"]
        assert [o["operator_id"] for o in listed] == [sub]
        # another operator may not read them, whatever the encoding
        assert (await stats.get(stats_path(sub), headers=token("someone-else"))).status_code == 403

        # every service's exposition still parses (no operator id breaks it)
        for client in (assigner, ingest, stats):
            text = (await client.get("/metrics")).text
            assert list(text_string_to_metric_families(text))


async def test_a_reassign_to_an_id_no_operator_could_have_is_a_422_and_changes_nothing(env):
    chat = cid()
    async with running("assigner", env.settings) as assigner, Producer(env.settings) as kafka:
        await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: in_state(env, chat, "waiting_assignment"))
        for bad in ("", "x" * 256, "line\nbreak"):
            r = await assigner.post(f"/v1/admin/chats/{chat}/reassign", json={"operator_id": bad}, headers=ADMIN)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "validation_error"
        assert (await chat_row(env, chat))["state"] == "waiting_assignment"


async def test_one_bad_pull_in_a_batch_fails_alone_and_every_other_command_applies(env):
    """The operator batch against real Postgres: a command no event could carry is refused alone (4xx)."""
    chats = [cid() for _ in range(3)]
    async with Producer(env.settings) as kafka, running("assigner", env.settings) as assigner:
        for chat in chats:
            await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: in_state(env, chats[-1], "waiting_assignment"))
        held = await assigner.post("/v1/assignments/next", headers=token("op-release"))
        assert held.status_code == 200
    pool = await create_pool(env.database_url, min_size=1, max_size=2)
    try:
        store = Assigner(pool, env.settings)
        commands = [
            OperatorCommand("pull", "alice@example.com"),
            OperatorCommand("pull", "bad\nsub"),
            OperatorCommand("release", "op-release", uuid.UUID(held.json()["assignment_id"])),
            OperatorCommand("pull", "auth0|bob"),
        ]
        results, _ = await store.operator_batch(commands)
        assert isinstance(results[1], InvalidCommand) and domain_error(results[1]).status == 422
        assert results[2] == held.json()["chat"]["chat_id"]
        given = {results[i][0].chat_id for i in (0, 3)}
        assert len(given) == 2 and None not in given
        assert results[0][0].new and results[3][0].new
    finally:
        await pool.close()


async def test_a_silent_operator_with_an_email_subject_is_timed_out_through_the_idle_monitor(env):
    """chat_assigned -> idle_monitor's deadline -> assignment_idle naming the operator -> the assigner."""
    sub = SUBJECTS["email"]
    settings = env.with_settings(idle_timeout_s=1.0, idle_check_interval_s=0.05)
    chat = cid()
    async with (
        running("assigner", settings) as assigner,
        running("idle_monitor", settings),
        running("stats", settings) as stats,
        Producer(settings) as kafka,
    ):
        await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: in_state(env, chat, "waiting_assignment"))
        pulled = await assigner.post("/v1/assignments/next", headers=token(sub))
        assert pulled.status_code == 200, pulled.text
        back = await eventually(lambda: in_state(env, chat, "waiting_assignment"), timeout=30)
        assert back["last_operator_id"] == sub

        async def counted():
            r = await stats.get(stats_path(sub), headers=ADMIN)
            return r.json() if r.json()["timed_out"] == 1 else None

        assert (await eventually(counted))["assignments"] == 1
