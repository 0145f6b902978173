"""The idle monitor's HTTP auth over the app built with a fake store: no Kafka, no Postgres.

The timer listing itself, readiness and metrics stay in tests/integration/test_idle_http.py.
"""

from __future__ import annotations

from tests import fakes, harness


async def test_the_timer_listing_is_for_admins_only():
    app = fakes.build("idle_monitor")
    async with fakes.serving(app, "idle_monitor") as client:
        anonymous = await client.get("/v1/admin/timers")
        operator = await client.get("/v1/admin/timers", headers=harness.token("op-1", "operator"))
        frontend = await client.get("/v1/admin/timers", headers=harness.token("fe", "frontend"))
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_token"
    assert operator.status_code == 403
    assert frontend.status_code == 403
    assert operator.json()["error"]["code"] == "forbidden_role"
    assert app.state.store.reached == []
