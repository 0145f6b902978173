"""Idle reclaim end to end: the assigner and the idle monitor side by side over real Kafka and Postgres.

A frontend produces chat messages, operators pull over HTTP, admins reassign; the idle monitor
hears the assigner's lifecycle facts and hands silent chats back through `chat.timeouts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from shared.events import TOPIC_INBOUND, TOPIC_TIMEOUTS
from tests import harness
from tests.harness import Producer, eventually, operator_message, running, token, user_message

ADMIN = token("admin-1", "admin")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def switchboard(settings):
    """The assigner and the idle monitor running in-process, with a frontend's Kafka producer."""
    async with running("assigner", settings) as assigner, running("idle_monitor", settings) as monitor:
        async with Producer(settings) as frontend:
            yield assigner, monitor, frontend


async def chat_view(assigner, chat_id: str) -> dict:
    """The chat as an admin sees it."""
    r = await assigner.get(f"/v1/chats/{chat_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


async def until_state(assigner, chat_id: str, state: str, timeout: float = 20) -> dict:
    """Wait until the chat reaches `state`; returns its view."""

    async def reached():
        r = await assigner.get(f"/v1/chats/{chat_id}", headers=ADMIN)
        return r.json() if r.status_code == 200 and r.json()["state"] == state else None

    return await eventually(reached, timeout=timeout)


async def queued_chat(assigner, frontend, text: str = "hey") -> str:
    """A user writes into a new chat; returns it once it waits for an operator."""
    chat = cid()
    await frontend.send(TOPIC_INBOUND, user_message(chat, text))
    await until_state(assigner, chat, "waiting_assignment")
    return chat


async def pull(assigner, operator: str) -> dict:
    """The operator pulls its next chat (which must exist)."""
    r = await assigner.post("/v1/assignments/next", headers=token(operator))
    assert r.status_code == 200, r.text
    return r.json()


async def idle_fired(settings, *, at_least: int, timeout: float) -> list[dict]:
    """The `assignment_idle` events the idle monitor published so far."""
    records = await harness.read_topic(settings, TOPIC_TIMEOUTS, min_records=at_least, timeout=timeout)
    return [harness.record_json(r) for r in records]


async def test_a_silent_operator_loses_the_chat_and_is_passed_over_for_it(env):
    settings = env.with_settings(idle_timeout_s=1.5, repeat_cooldown_s=600)
    async with switchboard(settings) as (assigner, monitor, frontend):
        chat = await queued_chat(assigner, frontend)
        taken = await pull(assigner, "op-silent")
        assert taken["chat"]["chat_id"] == chat

        back = await until_state(assigner, chat, "waiting_assignment", timeout=15)
        assert back["assigned_operator_id"] is None
        assert back["last_operator_id"] == "op-silent"
        assert (await assigner.get("/v1/assignments/current", headers=token("op-silent"))).status_code == 204
        # The silent operator is not offered the chat again; the next operator is.
        assert (await assigner.post("/v1/assignments/next", headers=token("op-silent"))).status_code == 204
        retaken = await pull(assigner, "op-next")
        fired = await idle_fired(settings, at_least=1, timeout=5)
    assert retaken["chat"]["chat_id"] == chat
    assert retaken["assignment_id"] != taken["assignment_id"]
    assert [m["text"] for m in retaken["chat"]["messages"]] == ["hey"]
    assert [(e["chat_id"], e["payload"]["assignment_id"], e["payload"]["operator_id"]) for e in fired] == [
        (chat, taken["assignment_id"], "op-silent")
    ]


async def test_an_operator_who_replies_in_time_is_untouched(env):
    settings = env.with_settings(idle_timeout_s=2.0)
    async with switchboard(settings) as (assigner, monitor, frontend):
        chat = await queued_chat(assigner, frontend)
        taken = await pull(assigner, "op-quick")
        await frontend.send(TOPIC_INBOUND, operator_message(chat, "op-quick", "hello, how can I help?"))
        await until_state(assigner, chat, "waiting_real_user_reply", timeout=10)

        async def disarmed():
            body = (await monitor.get("/v1/admin/timers", headers=ADMIN)).json()
            return body["armed"] == 0

        await eventually(disarmed, timeout=10)
        # Well past the old deadline: nothing fired and the chat is as the operator left it.
        await asyncio.sleep(2.5)
        view = await chat_view(assigner, chat)
        fired = await idle_fired(settings, at_least=1, timeout=1)
    assert view["state"] == "waiting_real_user_reply"
    assert view["last_operator_id"] == "op-quick"
    assert [m["text"] for m in view["messages"]] == ["hey", "hello, how can I help?"]
    assert fired == []
    assert taken["chat"]["chat_id"] == chat


async def test_an_admin_reassignment_is_not_disturbed_by_the_old_assignments_timer(env):
    settings = env.with_settings(idle_timeout_s=2.5, repeat_cooldown_s=600)
    async with switchboard(settings) as (assigner, monitor, frontend):
        chat = await queued_chat(assigner, frontend)
        first = await pull(assigner, "op-a")
        await asyncio.sleep(1.0)
        r = await assigner.post(f"/v1/admin/chats/{chat}/reassign", json={"operator_id": "op-b"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        second = r.json()

        # Past op-a's deadline, before op-b's: op-b keeps the chat.
        await asyncio.sleep(2.0)
        view = await chat_view(assigner, chat)
        assert view["state"] == "assigned" and view["assigned_operator_id"] == "op-b"
        current = await assigner.get("/v1/assignments/current", headers=token("op-b"))
        assert current.json()["assignment_id"] == second["assignment_id"]

        # op-b stays silent too, so the new assignment's own timer hands the chat back.
        back = await until_state(assigner, chat, "waiting_assignment", timeout=15)
        fired = await idle_fired(settings, at_least=1, timeout=5)
    assert back["last_operator_id"] == "op-b"
    assert [e["payload"]["assignment_id"] for e in fired] == [second["assignment_id"]]
    assert first["assignment_id"] != second["assignment_id"]


async def test_a_chat_handed_back_and_taken_again_is_timed_and_handed_back_again(env):
    settings = env.with_settings(idle_timeout_s=1.5, repeat_cooldown_s=600)
    async with switchboard(settings) as (assigner, monitor, frontend):
        chat = await queued_chat(assigner, frontend)
        rounds = []
        for operator in ("op-1", "op-2", "op-3"):
            taken = await pull(assigner, operator)
            assert taken["chat"]["chat_id"] == chat
            rounds.append(taken["assignment_id"])
            back = await until_state(assigner, chat, "waiting_assignment", timeout=15)
            assert back["last_operator_id"] == operator
            # The operator just timed out is passed over for this chat.
            assert (await assigner.post("/v1/assignments/next", headers=token(operator))).status_code == 204
        fired = await idle_fired(settings, at_least=3, timeout=10)
    assert [(e["payload"]["assignment_id"], e["payload"]["operator_id"]) for e in fired] == list(
        zip(rounds, ("op-1", "op-2", "op-3"))
    )
    assert len(set(rounds)) == 3


async def test_a_released_chat_is_not_timed_out_later(env):
    settings = env.with_settings(idle_timeout_s=1.5, repeat_cooldown_s=0)
    async with switchboard(settings) as (assigner, monitor, frontend):
        chat = await queued_chat(assigner, frontend)
        taken = await pull(assigner, "op-a")
        r = await assigner.post(f"/v1/assignments/{taken['assignment_id']}/release", headers=token("op-a"))
        assert r.status_code == 200, r.text
        await asyncio.sleep(2.5)
        view = await chat_view(assigner, chat)
        fired = await idle_fired(settings, at_least=1, timeout=1)
    assert view["state"] == "waiting_assignment"
    assert fired == []
