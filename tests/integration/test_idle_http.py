"""The idle monitor's HTTP surface: admin timer listing, health, readiness and metrics.

Who may list the timers needs no database: tests/unit/test_idle_api.py.
"""

from __future__ import annotations

import uuid

from shared.events import TOPIC_LIFECYCLE
from tests import harness
from tests.integration.test_idle_monitor import chat_assigned


async def test_an_admin_sees_the_armed_timers_soonest_first(env):
    settings = env.with_settings(idle_timeout_s=600)
    first, second = uuid.uuid4(), uuid.uuid4()
    async with harness.running("idle_monitor", settings) as client, harness.Producer(settings) as producer:
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-1", first, operator_id="op-a"))
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-2", second, operator_id="op-b"))

        async def listed():
            body = (await client.get("/v1/admin/timers", headers=harness.token("root", "admin"))).json()
            # The count and the list are two reads: wait until both have seen the two timers.
            return body if body["armed"] == 2 and len(body["timers"]) == 2 else None

        body = await harness.eventually(listed)
        one = (await client.get("/v1/admin/timers?limit=1", headers=harness.token("root", "admin"))).json()
    assert [t["assignment_id"] for t in body["timers"]] == [str(first), str(second)]
    assert [t["operator_id"] for t in body["timers"]] == ["op-a", "op-b"]
    assert body["timers"][0]["overdue_s"] == 0.0
    assert one["armed"] == 2 and len(one["timers"]) == 1


async def test_the_service_is_ready_and_exposes_its_timer_metrics(env):
    settings = env.with_settings(idle_timeout_s=600)
    async with harness.running("idle_monitor", settings) as client, harness.Producer(settings) as producer:
        await producer.send(TOPIC_LIFECYCLE, chat_assigned("chat-1", uuid.uuid4()))

        async def gauge_shows_one():
            text = (await client.get("/metrics")).text
            return text if "switchboard_idle_timers_pending 1.0" in text else None

        text = await harness.eventually(gauge_shows_one, timeout=20)
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
        openapi = (await client.get("/openapi.json")).json()
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "postgres": True,
        "migrations": True,
        "kafka": True,
        "consumers": True,
        "ticker": True,
        f"consumer:{settings.group('idle_monitor')}": True,
        "loop:idle-ticker": True,
        "loop:retention": True,
    }
    assert health.json()["service"] == "idle_monitor"
    for declared in (
        "# TYPE switchboard_idle_timers_pending gauge",
        "# TYPE switchboard_idle_timers_armed_total counter",
        "# TYPE switchboard_idle_timers_fired_total counter",
        "# TYPE switchboard_idle_fire_lateness_seconds histogram",
    ):
        assert declared in text
    assert "/v1/admin/timers" in openapi["paths"]
