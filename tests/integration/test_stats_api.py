"""The stats HTTP API on real tables: who may read which figures, zeros for strangers.

Tokens and day parsing need no database: tests/unit/test_stats_api.py.
"""

from __future__ import annotations

from tests import harness

ZERO = {
    "assignments": 0,
    "messages_sent": 0,
    "chats_handled": 0,
    "answered": 0,
    "released": 0,
    "timed_out": 0,
    "reassigned_away": 0,
    "first_response_count": 0,
    "first_response_ms_sum": 0,
}


async def test_an_operator_reads_its_own_figures_and_never_anyone_elses(env):
    async with harness.running("stats", env.settings) as client:
        own = await client.get("/v1/operators/op-1/stats", headers=harness.token("op-1"))
        assert own.status_code == 200 and own.json() == {"operator_id": "op-1", **ZERO}
        other = await client.get("/v1/operators/op-2/stats", headers=harness.token("op-1"))
        assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
        listing = await client.get("/v1/stats/operators", headers=harness.token("op-1"))
        assert listing.status_code == 403
        chat = await client.get("/v1/chats/chat-1/stats", headers=harness.token("op-1"))
        assert chat.status_code == 403


async def test_an_admin_reads_everything_and_a_never_seen_operator_is_all_zeros(env):
    admin = harness.token("boss", "admin")
    async with harness.running("stats", env.settings) as client:
        r = await client.get("/v1/operators/nobody/stats", params={"day": "2025-01-01"}, headers=admin)
        assert r.status_code == 200 and r.json() == {"operator_id": "nobody", **ZERO}
        r = await client.get("/v1/stats/operators", headers=admin)
        assert r.status_code == 200 and r.json() == {"day": None, "operators": [], "next_cursor": None}
        r = await client.get("/v1/chats/chat-1/stats", headers=admin)
        assert r.json() == {"chat_id": "chat-1", "user_messages": 0, "operator_messages": 0, "assignments": 0}


async def test_health_readiness_and_openapi_are_served(env):
    async with harness.running("stats", env.settings) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/operators/{operator_id}/stats", "/v1/stats/operators", "/v1/chats/{chat_id}/stats"} <= set(paths)
