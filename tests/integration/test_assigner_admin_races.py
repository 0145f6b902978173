"""Admin reassign and complete racing operators' pulls, releases and users' messages, on real Postgres.

A chat an admin acts on may have been changed by a transaction the admin's waited for: the admin's
command must see that transaction's assignment (not the one its first snapshot joined), and take
its locks in the order every other transaction takes them (chat, then operator). Zero 5xx.
"""

import asyncio
import random
import time
import uuid

from prometheus_client import REGISTRY

from shared.events import TOPIC_INBOUND
from tests.harness import Producer, eventually, operator_message, running, token, user_message
from tests.integration.test_assigner_concurrency import assert_invariants

ADMIN = token("boss", "admin")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def chat_row(env, chat_id):
    conn = await env.connect()
    try:
        return await conn.fetchrow("SELECT * FROM assigner.chats WHERE chat_id = $1", chat_id)
    finally:
        await conn.close()


async def waiting(env, *chat_ids):
    conn = await env.connect()
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM assigner.chats WHERE chat_id = ANY($1::text[]) AND state = 'waiting_assignment'",
            list(chat_ids),
        )
        return n == len(chat_ids)
    finally:
        await conn.close()


async def in_state(env, chat_id, state):
    row = await chat_row(env, chat_id)
    return row if row is not None and row["state"] == state else None


async def someone_waits_for_a_lock(env):
    conn = await env.connect()
    try:
        return await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()"
        )
    finally:
        await conn.close()


async def assign_in_open_transaction(conn, chat_id: str, operator_id: str) -> uuid.UUID:
    """What a pull writes, in a transaction the caller keeps open: the chat locked and assigned."""
    assignment_id = uuid.uuid4()
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM assigner.chats WHERE chat_id = $1 FOR UPDATE", chat_id)
    await conn.execute(
        "INSERT INTO assigner.assignments (assignment_id, chat_id, operator_id, via, started_at) "
        "VALUES ($1, $2, $3, 'pull', now())",
        assignment_id,
        chat_id,
        operator_id,
    )
    await conn.execute(
        "UPDATE assigner.chats SET state = 'assigned', assigned_operator_id = $2, assignment_id = $3, "
        "updated_at = now() WHERE chat_id = $1",
        chat_id,
        operator_id,
        assignment_id,
    )
    return assignment_id


async def test_an_admin_action_that_waited_for_a_pull_sees_the_pulls_assignment(env):
    chats = [cid(), cid()]
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        for chat in chats:
            await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: waiting(env, *chats))
        for chat, admin_action in zip(chats, ("complete", "reassign")):
            puller = await env.connect()
            try:
                pulled = await assign_in_open_transaction(puller, chat, "op-puller")
                body = {"json": {"operator_id": "op-admin-pick"}} if admin_action == "reassign" else {}
                action = asyncio.create_task(api.post(f"/v1/admin/chats/{chat}/{admin_action}", headers=ADMIN, **body))
                await eventually(lambda: someone_waits_for_a_lock(env))  # the admin waits for the pull's lock
                await puller.execute("COMMIT")
            finally:
                await puller.close()
            r = await action
            assert r.status_code == 200, r.text
            conn = await env.connect()
            try:
                ended = await conn.fetchrow(
                    "SELECT outcome, ended_at FROM assigner.assignments WHERE assignment_id = $1", pulled
                )
            finally:
                await conn.close()
            assert ended["outcome"] == ("completed" if admin_action == "complete" else "reassigned")
        await assert_invariants(env, capacity=1)


def consumer_retries(settings) -> float:
    return REGISTRY.get_sample_value("switchboard_consumer_retries_total", {"group": settings.group("assigner")}) or 0


async def test_an_operator_reply_the_consumer_applies_after_waiting_for_a_pull_counts_its_first_response(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: waiting(env, chat))
        puller = await env.connect()
        try:
            pulled = await assign_in_open_transaction(puller, chat, "op-a")
            before = consumer_retries(env.settings)
            await kafka.send(TOPIC_INBOUND, operator_message(chat, "op-a", "hello!"))
            await eventually(lambda: someone_waits_for_a_lock(env))  # the consumer waits for the pull's lock
            await puller.execute("COMMIT")
        finally:
            await puller.close()
        answered = await eventually(lambda: in_state(env, chat, "waiting_real_user_reply"))
        assert answered["last_operator_id"] == "op-a"
        conn = await env.connect()
        try:
            ended = await conn.fetchrow(
                "SELECT outcome, first_response_at FROM assigner.assignments WHERE assignment_id = $1", pulled
            )
        finally:
            await conn.close()
        assert ended["outcome"] == "answered" and ended["first_response_at"] is not None
        # applied at the first try: the batch did not fail on the assignment its snapshot missed
        assert consumer_retries(env.settings) == before
        assert (await api.get("/readyz")).status_code == 200


async def test_a_reassign_takes_the_chat_lock_before_the_operators_as_a_batch_does(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: waiting(env, chat))
        batch = await env.connect()
        try:
            # A batch releasing this chat holds its lock, then takes a puller's operator lock.
            await batch.execute("BEGIN")
            await batch.execute("SET LOCAL lock_timeout = '10s'")
            await batch.execute("SELECT 1 FROM assigner.chats WHERE chat_id = $1 FOR UPDATE", chat)
            reassign = asyncio.create_task(
                api.post(f"/v1/admin/chats/{chat}/reassign", headers=ADMIN, json={"operator_id": "op-b"})
            )
            await eventually(lambda: someone_waits_for_a_lock(env))
            # The old order (operator, then chat) deadlocks here; Postgres then aborts one side.
            await batch.execute("SELECT pg_advisory_xact_lock(hashtext('assigner.operator:' || $1::text))", "op-b")
            await batch.execute("COMMIT")
        finally:
            await batch.close()
        r = await reassign
        assert r.status_code == 200, r.text
        assert r.json()["chat"]["assigned_operator_id"] == "op-b"


async def test_a_reassign_to_an_operator_holding_another_chat_answers_the_assignment_it_created(env):
    settings = env.with_settings(operator_capacity=2)
    chats = [cid(), cid()]
    async with running("assigner", settings) as api, Producer(settings) as kafka:
        for chat in chats:
            await kafka.send(TOPIC_INBOUND, user_message(chat))
        await eventually(lambda: waiting(env, *chats))
        pulled = await api.post("/v1/assignments/next", headers=token("op-x"))
        assert pulled.status_code == 200
        moved = next(c for c in chats if c != pulled.json()["chat"]["chat_id"])

        r = await api.post(f"/v1/admin/chats/{moved}/reassign", json={"operator_id": "op-x"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["chat"]["chat_id"] == moved and body["chat"]["assigned_operator_id"] == "op-x"
        row = await chat_row(env, moved)
        assert uuid.UUID(body["assignment_id"]) == row["assignment_id"]
        assert body["assignment_id"] != pulled.json()["assignment_id"]

        # Reassigning a chat to the operator who already holds it answers that same assignment.
        again = await api.post(f"/v1/admin/chats/{moved}/reassign", json={"operator_id": "op-x"}, headers=ADMIN)
        assert again.status_code == 200 and again.json()["assignment_id"] == body["assignment_id"]
        # At capacity, another chat is refused before anything changes.
        third = cid()
        await kafka.send(TOPIC_INBOUND, user_message(third))
        await eventually(lambda: waiting(env, third))
        full = await api.post(f"/v1/admin/chats/{third}/reassign", json={"operator_id": "op-x"}, headers=ADMIN)
        assert full.status_code == 409 and full.json()["error"]["code"] == "operator_at_capacity"
        await assert_invariants(env, capacity=2)


ALLOWED = {200, 204, 403, 404, 409}


async def test_admin_reassigns_and_completes_racing_pulls_releases_and_user_messages_never_answer_5xx(env):
    """Thirty bounded rounds; invariants 1 and 2 after each."""
    capacity, rounds = 2, 30
    settings = env.with_settings(operator_capacity=capacity, repeat_cooldown_s=0, db_pool_max=20)
    operators = [f"op-{i}" for i in range(4)]
    rng = random.Random(13)
    statuses: dict[int, int] = {}
    started = time.monotonic()

    async with running("assigner", settings) as api, Producer(settings) as kafka:

        async def call(method, path, **kw):
            r = await api.request(method, path, **kw)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code in ALLOWED, f"{method} {path} -> {r.status_code} {r.text}"
            return r

        async def operator(op):
            for _ in range(2):
                r = await call("POST", "/v1/assignments/next", headers=token(op))
                if r.status_code == 200 and rng.random() < 0.6:
                    kind = rng.choice(("release", "complete"))
                    await call("POST", f"/v1/assignments/{r.json()['assignment_id']}/{kind}", headers=token(op))

        async def admin(chat):
            await asyncio.sleep(rng.random() * 0.01)
            if rng.random() < 0.5:
                await call(
                    "POST",
                    f"/v1/admin/chats/{chat}/reassign",
                    headers=ADMIN,
                    json={"operator_id": rng.choice(operators)},
                )
            else:
                await call("POST", f"/v1/admin/chats/{chat}/complete", headers=ADMIN)

        async def user(chat):
            await asyncio.sleep(rng.random() * 0.01)
            await kafka.send(TOPIC_INBOUND, user_message(chat, "still there?"))

        for _ in range(rounds):
            chats = [cid() for _ in range(4)]
            await asyncio.gather(*(kafka.send(TOPIC_INBOUND, user_message(c)) for c in chats))
            await eventually(lambda: waiting(env, *chats))
            await asyncio.gather(
                *(operator(op) for op in operators),
                *(admin(c) for c in chats),
                *(admin(c) for c in rng.sample(chats, 2)),
                *(user(c) for c in rng.sample(chats, 2)),
            )
            await assert_invariants(env, capacity)
            # Clear the floor for the next round: every chat of this round completed.
            for chat in chats:
                await call("POST", f"/v1/admin/chats/{chat}/complete", headers=ADMIN)
    assert time.monotonic() - started < 60
    assert statuses.get(200, 0) > rounds * 4  # the races really ran
