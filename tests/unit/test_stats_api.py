"""The stats HTTP API's auth and day parsing over the app built with a fake store: no Kafka, no Postgres.

Figures read from the real tables stay in tests/integration/test_stats_api.py.
"""

from __future__ import annotations

from datetime import date
from urllib.parse import quote

from tests import fakes, harness


async def test_missing_or_bad_tokens_are_401_and_frontends_are_403():
    app = fakes.build("stats")  # an Untouched store: every refusal happens before it is reached
    async with fakes.serving(app, "stats") as client:
        for path in ("/v1/operators/op-1/stats", "/v1/stats/operators", "/v1/chats/c/stats"):
            assert (await client.get(path)).status_code == 401
            bad = {"Authorization": "Bearer not-a-token"}
            assert (await client.get(path, headers=bad)).status_code == 401
            forged = harness.token("boss", "admin", secret="another-secret-0123456789abcdefghij")
            assert (await client.get(path, headers=forged)).status_code == 401
            assert (await client.get(path, headers=harness.token("web", "frontend"))).status_code == 403
        # The token is checked before the query string.
        assert (await client.get("/v1/stats/operators", params={"day": "nope"})).status_code == 401


async def test_a_day_that_is_not_a_calendar_date_is_422():
    admin = harness.token("boss", "admin")
    store = fakes.StatsStore()
    async with fakes.serving(fakes.build("stats", store=store), "stats") as client:
        for day in ("yesterday", "2025-02-30", "2025-1-5", "20250105", "2025-01-05T00:00:00", ""):
            for path in ("/v1/operators/op-1/stats", "/v1/stats/operators"):
                r = await client.get(path, params={"day": day}, headers=admin)
                assert r.status_code == 422, (day, r.text)
                assert r.json()["error"]["code"] == "validation_error"
        r = await client.get("/v1/stats/operators", params={"day": "2024-02-29"}, headers=admin)
        assert r.status_code == 200 and r.json()["day"] == "2024-02-29"
    assert store.days == [date(2024, 2, 29)]  # no refused day reached the store


async def test_the_stats_path_refuses_an_id_no_operator_could_have_with_a_json_422():
    admin = harness.token("boss", "admin")
    app = fakes.build("stats")  # an Untouched store: a refused id never reaches it
    async with fakes.serving(app, "stats") as stats:
        for bad in ("x" * 256, "tab\there", "zero\u200bwidth"):
            r = await stats.get(f"/v1/operators/{quote(bad, safe='')}/stats", headers=admin)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "validation_error"
        assert (await stats.get("/v1/operators//stats", headers=admin)).status_code == 422
    assert app.state.store.reached == []
