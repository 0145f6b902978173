"""Stats end to end: frontends on chat.inbound, operators over HTTP, the assigner's facts counted exactly."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from shared.events import TOPIC_INBOUND
from switchboard.reconcile import rebuild, reconcile
from tests.harness import Producer, eventually, operator_message, running, token, user_message

ADMIN = token("boss", "admin")


async def _state(env, chat_id):
    conn = await env.connect()
    try:
        return await conn.fetchval("SELECT state FROM assigner.chats WHERE chat_id = $1", chat_id)
    finally:
        await conn.close()


async def test_the_seed_example_through_the_assigner_gives_exactly_the_spec_figures(env):
    chat = f"chat-{uuid.uuid4().hex[:8]}"
    async with (
        running("assigner", env.settings) as assigner,
        running("stats", env.settings) as stats,
        Producer(env.settings) as frontend,
    ):
        await frontend.send(TOPIC_INBOUND, user_message(chat, "hey"))
        await eventually(lambda: _is(env, chat, "waiting_assignment"))
        pulled = await assigner.post("/v1/assignments/next", headers=token("op-seed"))
        assert pulled.status_code == 200 and pulled.json()["chat"]["chat_id"] == chat
        # The user writes again while the operator types.
        await frontend.send(TOPIC_INBOUND, user_message(chat, "how are you?"))

        async def both_seen():
            r = await assigner.get("/v1/assignments/current", headers=token("op-seed"))
            return r.status_code == 200 and r.json()["chat"]["message_count"] == 2

        await eventually(both_seen)
        await frontend.send(TOPIC_INBOUND, operator_message(chat, "op-seed", "fine, how can I help?"))
        await eventually(lambda: _is(env, chat, "waiting_real_user_reply"))

        async def chat_counted():
            r = await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)
            return r.json() if r.json()["operator_messages"] == 1 else None

        assert await eventually(chat_counted) == {
            "chat_id": chat,
            "user_messages": 2,
            "operator_messages": 1,
            "assignments": 1,
        }

        async def operator_counted():
            r = await stats.get("/v1/operators/op-seed/stats", headers=token("op-seed"))
            return r.json() if r.json()["answered"] == 1 else None

        mine = await eventually(operator_counted)
        assert {
            k: mine[k] for k in ("assignments", "messages_sent", "chats_handled", "answered", "first_response_count")
        } == {"assignments": 1, "messages_sent": 1, "chats_handled": 1, "answered": 1, "first_response_count": 1}
        assert mine["released"] == mine["timed_out"] == mine["reassigned_away"] == 0
        report = await reconcile(env.settings)
        assert report.differences == [] and report.not_quiescent is None


async def _is(env, chat, state):
    return await _state(env, chat) == state


async def test_a_random_run_of_over_2000_events_reconciles_exactly_and_rebuild_equals_live(env):
    settings = env.with_settings(idle_timeout_s=1.5, idle_check_interval_s=0.1, repeat_cooldown_s=0.5)
    rng = random.Random(20250531)
    chats = [f"chat-r{i}" for i in range(40)]
    operators = [f"op-{i}" for i in range(5)]
    deadline = time.monotonic() + 90
    produced = {"inbound": 0, "actions": 0}

    async with (
        running("assigner", settings) as assigner,
        running("idle_monitor", settings),
        running("stats", settings) as stats,
        Producer(settings) as frontend,
    ):

        async def users():
            for _ in range(900):
                if time.monotonic() > deadline:
                    return
                await frontend.send(TOPIC_INBOUND, user_message(rng.choice(chats), "question"))
                produced["inbound"] += 1
                await asyncio.sleep(rng.uniform(0, 0.01))

        async def operator(me: str):
            headers = token(me)
            for _ in range(160):
                if time.monotonic() > deadline:
                    return
                r = await assigner.post("/v1/assignments/next", headers=headers)
                produced["actions"] += 1
                if r.status_code == 204:
                    await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text
                got = r.json()
                roll = rng.random()
                if roll < 0.55:
                    await frontend.send(TOPIC_INBOUND, operator_message(got["chat"]["chat_id"], me, "answer"))
                    produced["inbound"] += 1
                elif roll < 0.7:
                    await assigner.post(f"/v1/assignments/{got['assignment_id']}/release", headers=headers)
                elif roll < 0.77:
                    await assigner.post(f"/v1/assignments/{got['assignment_id']}/complete", headers=headers)
                elif roll < 0.85:
                    other = rng.choice([o for o in operators if o != me])
                    await assigner.post(
                        f"/v1/admin/chats/{got['chat']['chat_id']}/reassign", headers=ADMIN, json={"operator_id": other}
                    )
                elif roll < 0.92:
                    # A colleague writes into a chat it does not hold.
                    await frontend.send(TOPIC_INBOUND, operator_message(rng.choice(chats), me, "fyi"))
                    produced["inbound"] += 1
                # else: stay silent, so the idle monitor takes the chat back (timed_out).
                await asyncio.sleep(rng.uniform(0, 0.02))

        await asyncio.gather(users(), *(operator(o) for o in operators))
        assert time.monotonic() < deadline + 5, "the run overran its time bound"

        # One operator certainly ends the run holding a chat and silent, so a timeout is exercised.
        await frontend.send(TOPIC_INBOUND, user_message("chat-silent", "anyone?"))
        produced["inbound"] += 1

        async def holds():
            r = await assigner.post("/v1/assignments/next", headers=token(operators[0]))
            return r.status_code == 200

        await eventually(holds, timeout=30)

        # Let every silent assignment time out and every fact be counted, then recount.
        async def settled():
            conn = await env.connect()
            try:
                active = await conn.fetchval("SELECT count(*) FROM assigner.assignments WHERE ended_at IS NULL")
            finally:
                await conn.close()
            if active:
                return None
            report = await reconcile(settings, quiesce_timeout_s=5)
            return report if report.not_quiescent is None and not report.differences else None

        report = await eventually(settled, timeout=90, interval=0.5)
        assert report.compared["operator_total"] == len(operators)

        replay = await rebuild(settings)
        assert replay.differences == []
        assert replay.replayed >= 2000, replay.replayed

        everyone = (await stats.get("/v1/stats/operators", headers=ADMIN)).json()["operators"]
        assert [o["operator_id"] for o in everyone] == operators
        outcomes = {k: sum(o[k] for o in everyone) for k in ("answered", "released", "timed_out", "reassigned_away")}
        assert all(outcomes.values()), outcomes  # the run exercised every outcome
