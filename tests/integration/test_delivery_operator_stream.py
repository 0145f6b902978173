"""The operator stream against real Kafka and Postgres: my chats' messages and my assignments ending."""

from __future__ import annotations

import uuid

from shared.auth import issue_token
from shared.events import TOPIC_INBOUND
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, Producer, eventually, operator_message, running, token, user_message
from tests.integration.test_delivery_stream import open_sse

ADMIN = token("boss", "admin")


def operator_stream(url, operator_id, last_event_id=None, ignore=("queue_depth",)):
    """An operator's stream; queue depth (tested in test_delivery_queue_depth.py) is skipped unless asked for."""
    tok = issue_token(TEST_SECRET, operator_id, "operator")
    return open_sse(f"{url}/v1/operators/me/stream", tok, last_event_id, ignore)


def summary(events):
    return [(e["event"], e["data"]["chat_id"], e["data"].get("text") or e["data"].get("outcome")) for e in events]


async def test_an_operator_hears_its_chats_messages_and_every_way_its_assignments_end(env):
    settings = env.with_settings(delivery_heartbeat_s=1, repeat_cooldown_s=0)
    one, two = f"chat-{uuid.uuid4().hex[:6]}", f"chat-{uuid.uuid4().hex[:6]}"
    async with (
        running("assigner", settings) as assigner,
        serving("delivery", settings, free_port()) as url,
        Producer(settings) as frontend,
    ):
        async with operator_stream(url, "op-1") as mine, operator_stream(url, "op-2") as theirs:
            assert mine.response.status_code == 200
            await frontend.send(TOPIC_INBOUND, user_message(one, "first question"))

            async def pull(op):
                r = await assigner.post("/v1/assignments/next", headers=token(op))
                return r.json() if r.status_code == 200 else None

            got = await eventually(lambda: pull("op-1"))
            assert got["chat"]["chat_id"] == one
            await frontend.send(TOPIC_INBOUND, user_message(one, "are you there?"))
            # Before the pull: on nobody's stream. After it: on op-1's.
            assert summary(await mine.take(2)) == [
                ("assignment_started", one, None),
                ("message", one, "are you there?"),
            ]
            r = await assigner.post(f"/v1/admin/chats/{one}/reassign", headers=ADMIN, json={"operator_id": "op-2"})
            assert r.status_code == 200, r.text
            assert summary(await mine.take(1)) == [("assignment_ended", one, "reassigned")]
            r = await assigner.post(f"/v1/admin/chats/{one}/complete", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert summary(await theirs.take(2)) == [
                ("assignment_started", one, None),
                ("assignment_ended", one, "completed"),
            ]

            await frontend.send(TOPIC_INBOUND, user_message(two, "second chat"))
            got = await eventually(lambda: pull("op-1"))
            assert got["chat"]["chat_id"] == two
            await frontend.send(TOPIC_INBOUND, operator_message(two, "op-1", "here is your answer"))
            assert summary(await mine.take(3)) == [
                ("assignment_started", two, None),
                ("message", two, "here is your answer"),
                ("assignment_ended", two, "answered"),
            ]
            await frontend.send(TOPIC_INBOUND, user_message(two, "thanks, bye"))
            assert await mine.quiet(1.5) == [], "a message of a chat op-1 no longer holds reached it"
            assert mine.comments >= 1

        # Reconnecting resumes after the last id seen, with nothing twice.
        async with operator_stream(url, "op-1", last_event_id="2") as again:
            rest = await again.take(4)
        assert [e["id"] for e in rest] == ["3", "4", "5", "6"]
        assert summary(rest)[0] == ("assignment_ended", one, "reassigned")


async def test_only_an_operator_token_opens_the_operator_stream(env):
    async with running("delivery", env.settings) as delivery:
        for headers, expected in (
            ({}, (401, "missing_token")),
            (token("web", "frontend"), (403, "forbidden_role")),
            (token("chat-a", "chat"), (403, "forbidden_role")),
            (token("boss", "admin"), (403, "forbidden_role")),
        ):
            r = await delivery.get("/v1/operators/me/stream", headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == expected
