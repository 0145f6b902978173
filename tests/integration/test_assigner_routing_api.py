"""The routing HTTP API of the assigner (docs/contract.md "Routing") against real Kafka and Postgres."""

import json
from datetime import datetime, timedelta

from shared.events import (
    TOPIC_INBOUND,
    TOPIC_LIFECYCLE,
    Routing,
    UserMessage,
    UserMessagePayload,
    new_event_id,
    operator_key,
    utcnow,
)
from tests import harness
from tests.harness import Producer, running, token
from tests.integration.test_assigner_flow import wait_state

ADMIN = token("root", "admin")


def routed(chat_id: str, message_id: str = "m-1", **routing) -> UserMessage:
    payload = UserMessagePayload(message_id=message_id, text="hi", routing=Routing(**routing))
    return UserMessage(event_id=new_event_id(), chat_id=chat_id, occurred_at=utcnow(), producer="test", payload=payload)


async def test_queues_are_created_listed_by_page_read_and_deleted_but_default_stays(env):
    async with running("assigner", env.settings) as api:
        created = await api.put(
            "/v1/admin/queues/sales", json={"name": "Sales", "sla_first_assignment_s": 30}, headers=ADMIN
        )
        replaced = await api.put("/v1/admin/queues/sales", json={"name": "Sales team"}, headers=ADMIN)
        assert (created.status_code, replaced.status_code) == (201, 200), created.text
        assert replaced.json()["sla_first_assignment_s"] == 60 and replaced.json()["name"] == "Sales team"
        for q in ("a1", "a2"):
            assert (await api.put(f"/v1/admin/queues/{q}", json={"name": q}, headers=ADMIN)).status_code == 201
        first = (await api.get("/v1/admin/queues?limit=2", headers=ADMIN)).json()
        rest = (await api.get(f"/v1/admin/queues?limit=2&cursor={first['next_cursor']}", headers=ADMIN)).json()
        assert [q["queue_id"] for q in first["queues"] + rest["queues"]] == ["a1", "a2", "default", "sales"]
        assert rest["next_cursor"] is None
        bad = await api.put("/v1/admin/queues/Not%20A%20Slug", json={"name": "x"}, headers=ADMIN)
        negative = await api.put("/v1/admin/queues/x", json={"name": "x", "priority_step_s": -1}, headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "queue_id"
        assert negative.status_code == 422 and negative.json()["error"]["details"][0]["field"] == "priority_step_s"
        keep = await api.delete("/v1/admin/queues/default", headers=ADMIN)
        assert keep.status_code == 409 and keep.json()["error"]["code"] == "default_queue"
        gone = await api.delete("/v1/admin/queues/sales", headers=ADMIN)
        assert gone.status_code == 200 and gone.json() == {"queue_id": "sales", "moved_chats": 0}
        assert (await api.get("/v1/admin/queues/sales", headers=ADMIN)).status_code == 404
        assert (await api.delete("/v1/admin/queues/sales", headers=ADMIN)).status_code == 404
        assert (await api.get("/v1/admin/queues", headers=token("op-a"))).status_code == 403


async def test_operator_profiles_are_checked_and_an_operator_sees_its_own_profile(env):
    async with running("assigner", env.settings) as api:
        me = await api.get("/v1/operators/me", headers=token("auth0|42"))
        assert me.json() == {
            "operator_id": "auth0|42",
            "display_name": "",
            "queues": ["default"],
            "skills": [],
            "capacity": None,
            "status": "available",
        }
        unknown = await api.put("/v1/admin/operators/auth0%7C42", json={"queues": ["nowhere"]}, headers=ADMIN)
        negative = await api.put("/v1/admin/operators/auth0%7C42", json={"capacity": -1}, headers=ADMIN)
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_queue"
        assert negative.status_code == 422 and negative.json()["error"]["details"][0]["field"] == "capacity"
        await api.put("/v1/admin/queues/vip", json={"name": "VIP"}, headers=ADMIN)
        body = {"display_name": "Ann", "queues": ["vip", "default"], "skills": ["fr", "de"], "capacity": 3}
        put = await api.put("/v1/admin/operators/auth0%7C42", json=body, headers=ADMIN)
        assert put.status_code == 201, put.text
        assert put.json()["skills"] == ["de", "fr"] and put.json()["queues"] == ["vip", "default"]
        away = await api.put("/v1/operators/me/status", json={"status": "away"}, headers=token("auth0|42"))
        assert away.status_code == 200 and away.json()["status"] == "away"
        assert (await api.get("/v1/operators/me", headers=token("auth0|42"))).json()["queues"] == ["vip", "default"]
        pulled = await api.post("/v1/assignments/next", headers=token("auth0|42"))
        assert pulled.status_code == 409 and pulled.json()["error"]["code"] == "operator_unavailable"
        back = await api.put("/v1/admin/operators/auth0%7C42/status", json={"status": "available"}, headers=ADMIN)
        assert back.json()["status"] == "available"
        assert (await api.post("/v1/assignments/next", headers=token("auth0|42"))).status_code == 204
        listed = (await api.get("/v1/admin/operators", headers=ADMIN)).json()
        assert [o["operator_id"] for o in listed["operators"]] == ["auth0|42"]
        bad_status = await api.put("/v1/operators/me/status", json={"status": "busy"}, headers=token("op-b"))
        assert bad_status.status_code == 422 and bad_status.json()["error"]["details"][0]["field"] == "status"


async def test_an_admin_routes_a_waiting_chat_and_removing_its_operator_returns_a_held_one(env):
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await api.put("/v1/admin/queues/billing", json={"name": "Billing"}, headers=ADMIN)
        await kafka.send(TOPIC_INBOUND, routed("c-route", queue="nowhere", priority=1))
        await kafka.send(TOPIC_INBOUND, routed("c-held"))
        waiting = await wait_state(env, "c-route", "waiting_assignment")
        held_before = await wait_state(env, "c-held", "waiting_assignment")
        assert waiting["queue_id"] == "default"
        await api.put("/v1/admin/operators/op-b", json={"queues": ["default"]}, headers=ADMIN)
        held = await api.post("/v1/assignments/next", headers=token("op-b"))
        assert held.status_code == 200 and held.json()["chat"]["chat_id"] == "c-route"  # priority 1 ranks first
        moved = await api.post(
            "/v1/admin/chats/c-held/route", json={"queue": "billing", "skills": ["de"]}, headers=ADMIN
        )
        assert moved.status_code == 200, moved.text
        assert (moved.json()["queue_id"], moved.json()["skills"]) == ("billing", ["de"])
        row = await wait_state(env, "c-held", "waiting_assignment")
        assert row["waiting_since"] == held_before["waiting_since"]
        unknown = await api.post("/v1/admin/chats/c-held/route", json={"queue": "nowhere"}, headers=ADMIN)
        malformed = await api.post("/v1/admin/chats/c-held/route", json={"priority": 10}, headers=ADMIN)
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_queue"
        assert malformed.status_code == 422 and malformed.json()["error"]["details"][0]["field"] == "priority"
        removed = await api.delete("/v1/admin/operators/op-b", headers=ADMIN)
        assert removed.json() == {"operator_id": "op-b", "returned_chats": 1}
        back = await wait_state(env, "c-route", "waiting_assignment")
        assert back["waiting_since"] == waiting["waiting_since"]
        assert (await api.delete("/v1/admin/operators/op-b", headers=ADMIN)).status_code == 404

        async def all_published():
            conn = await env.connect()
            try:
                return await conn.fetchval("SELECT count(*) = 0 FROM assigner.outbox")
            finally:
                await conn.close()

        await harness.eventually(all_published, timeout=20)
        metrics = (await api.get("/metrics")).text
        assert 'switchboard_queue_waiting_chats{queue="default"}' in metrics
        assert 'switchboard_queue_oldest_waiting_seconds{queue="default"}' in metrics
        assert 'switchboard_operators{status="offline"}' in metrics
        fallbacks = [line for line in metrics.splitlines() if line.startswith("switchboard_routing_fallbacks_total ")]
        assert fallbacks and float(fallbacks[0].split()[1]) >= 1

    facts = [
        json.loads(r.value) for r in await harness.read_topic(env.settings, TOPIC_LIFECYCLE, min_records=10, timeout=20)
    ]
    routed_facts = {f["chat_id"]: f["payload"] for f in facts if f["type"] == "chat_routed"}
    fallback, by_admin = routed_facts["c-route"], routed_facts["c-held"]
    assert (fallback["requested_queue"], fallback["queue_id"], fallback["by"]) == ("nowhere", "default", "user_message")
    assert (by_admin["by"], by_admin["previous_queue_id"], by_admin["queue_id"]) == ("admin", "default", "billing")
    status = [f for f in facts if f["type"] == "operator_status_changed"]
    assert status[0]["chat_id"] == operator_key("op-b") and status[0]["payload"]["by"] == "removed"
    first = next(f["payload"] for f in facts if f["type"] == "chat_assigned")
    assert first["first_wait_ms"] >= 0 and first["sla_met"] is True and first["queue_id"] == "default"


async def test_a_queue_idle_override_sets_the_idle_deadline_and_travels_on_chat_assigned(env):
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await api.put("/v1/admin/queues/slow", json={"name": "Slow", "idle_timeout_s": 900}, headers=ADMIN)
        await api.put("/v1/admin/operators/op-s", json={"queues": ["slow"]}, headers=ADMIN)
        await kafka.send(TOPIC_INBOUND, routed("c-slow", queue="slow"))
        await wait_state(env, "c-slow", "waiting_assignment")
        pulled = (await api.post("/v1/assignments/next", headers=token("op-s"))).json()
        current = (await api.get("/v1/assignments/current", headers=token("op-s"))).json()
        for body in (pulled, current):
            deadline = datetime.fromisoformat(body["idle_deadline"]) - datetime.fromisoformat(body["assigned_at"])
            assert deadline == timedelta(seconds=900)
        records = await harness.read_topic(env.settings, TOPIC_LIFECYCLE, min_records=4, timeout=20)
    assigned = [json.loads(r.value) for r in records if json.loads(r.value)["type"] == "chat_assigned"]
    assert [f["payload"]["idle_timeout_s"] for f in assigned] == [900]
    assert assigned[0]["payload"]["queue_id"] == "slow"


async def test_the_five_hundred_and_first_queue_is_refused_but_an_existing_one_may_still_change(env):
    conn = await env.connect()
    try:  # default plus 498: room for one more
        await conn.execute(
            "INSERT INTO assigner.queues (queue_id, name) SELECT 'q' || g, 'Q' FROM generate_series(1, 498) g"
        )
    finally:
        await conn.close()
    async with running("assigner", env.settings) as api:
        last = await api.put("/v1/admin/queues/last", json={"name": "Last"}, headers=ADMIN)
        over = await api.put("/v1/admin/queues/over", json={"name": "Over"}, headers=ADMIN)
        edit = await api.put("/v1/admin/queues/q1", json={"name": "Edited"}, headers=ADMIN)
    assert last.status_code == 201, last.text
    assert over.status_code == 409 and over.json()["error"]["code"] == "queue_limit"
    assert edit.status_code == 200
