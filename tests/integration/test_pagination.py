"""Every list is paginated: limit + opaque keyset cursor, `next_cursor` null at the end.

Bad cursors and limits are refused before any query: tests/unit/test_pagination.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from shared.pagination import encode_cursor
from tests.harness import running, token

ADMIN = token("boss", "admin")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _insert_stuck_chats(env, n: int) -> list[str]:
    """n chats waiting since one of a few instants (many ties) plus some assigned; returns ids in list order."""
    conn = await env.connect()
    try:
        expected = []
        async with conn.transaction():
            for i in range(n):
                chat = f"stuck-{i:04d}"
                since = T0 + timedelta(seconds=i % 7)  # ties: order falls back to the chat id
                if i % 5 == 0:  # assigned: listed by when the assignment started
                    started = T0 + timedelta(seconds=3, microseconds=i)
                    await conn.execute(
                        "INSERT INTO assigner.chats (chat_id, state, assigned_operator_id, assignment_id, waiting_since,"
                        " queued_at, message_count, created_at, updated_at)"
                        " VALUES ($1, 'assigned', 'op-1', gen_random_uuid(), $2, $2, 1, $2, $2)",
                        chat,
                        since,
                    )
                    await conn.execute(
                        "INSERT INTO assigner.assignments (assignment_id, chat_id, operator_id, via, started_at)"
                        " SELECT assignment_id, chat_id, 'op-1', 'pull', $2 FROM assigner.chats WHERE chat_id = $1",
                        chat,
                        started,
                    )
                    expected.append((started, chat))
                else:
                    await conn.execute(
                        "INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, message_count,"
                        " created_at, updated_at) VALUES ($1, 'waiting_assignment', $2, $2, 1, $2, $2)",
                        chat,
                        since,
                    )
                    expected.append((since, chat))
            # Neither waiting nor assigned: never listed.
            await conn.execute(
                "INSERT INTO assigner.chats (chat_id, state, message_count, created_at, updated_at)"
                " VALUES ('done-1', 'completed', 1, $1, $1)",
                T0,
            )
    finally:
        await conn.close()
    return [chat for _since, chat in sorted(expected)]


async def _walk(client, path: str, key: str, **params) -> tuple[list[dict], int]:
    rows, pages, cursor = [], 0, None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await client.get(path, params=query, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        rows.extend(body[key])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, pages
        assert pages < 100


async def test_stuck_chats_come_in_pages_and_a_walk_sees_every_chat_exactly_once_in_order(env):
    expected = await _insert_stuck_chats(env, 250)
    async with running("assigner", env.with_settings(assigner_mode="api")) as api:
        first = (await api.get("/v1/admin/stuck-chats", params={"older_than_s": 0}, headers=ADMIN)).json()
        assert len(first["chats"]) == 100 and first["next_cursor"]  # the default page

        rows, pages = await _walk(api, "/v1/admin/stuck-chats", "chats", older_than_s=0)
        assert [c["chat_id"] for c in rows] == expected and pages == 3

        rows, pages = await _walk(api, "/v1/admin/stuck-chats", "chats", older_than_s=0, limit=7)
        assert [c["chat_id"] for c in rows] == expected and pages == 36

        rows, pages = await _walk(api, "/v1/admin/stuck-chats", "chats", older_than_s=0, limit=1000)
        assert [c["chat_id"] for c in rows] == expected and pages == 1

        exact = await api.get("/v1/admin/stuck-chats", params={"older_than_s": 0, "limit": 250}, headers=ADMIN)
        assert len(exact.json()["chats"]) == 250 and exact.json()["next_cursor"] is None


async def _insert_operators(env, n: int, day: date) -> list[str]:
    conn = await env.connect()
    try:
        ids = [f"op-{i:04d}" for i in range(n)] + ["alice@example.com", "provider|42", "Zed"]
        await conn.executemany(
            "INSERT INTO stats.operator_totals (operator_id, assignments) VALUES ($1, $2)",
            [(op, i + 1) for i, op in enumerate(ids)],
        )
        await conn.executemany(
            "INSERT INTO stats.operator_daily (operator_id, day, assignments) VALUES ($1, $2, 1)",
            [(op, day) for op in ids[::3]],
        )
        return [
            r["operator_id"]
            for r in await conn.fetch("SELECT operator_id FROM stats.operator_totals ORDER BY operator_id")
        ]
    finally:
        await conn.close()


async def test_stats_operators_come_in_pages_and_a_walk_sees_every_operator_exactly_once_in_order(env):
    day = date(2026, 3, 1)
    expected = await _insert_operators(env, 230, day)
    async with running("stats", env.settings) as stats:
        first = (await stats.get("/v1/stats/operators", headers=ADMIN)).json()
        assert len(first["operators"]) == 100 and first["next_cursor"] and first["day"] is None

        rows, pages = await _walk(stats, "/v1/stats/operators", "operators")
        assert [r["operator_id"] for r in rows] == expected and pages == 3
        assert sum(r["assignments"] for r in rows) == sum(range(1, len(expected) + 1))

        rows, pages = await _walk(stats, "/v1/stats/operators", "operators", day=day.isoformat(), limit=9)
        assert [r["operator_id"] for r in rows] == expected and pages == 26
        assert sum(r["assignments"] for r in rows) == len(range(0, len(expected), 3))

        for cursor in (
            "nope",
            encode_cursor("assigner.stuck-chats", ["2026-01-01T00:00:00+00:00", "c"]),
            encode_cursor("stats.operators", ["op\x00-1"]),
            encode_cursor("stats.operators", [1]),
        ):
            r = await stats.get("/v1/stats/operators", params={"cursor": cursor}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", r.text
        for limit in ("0", "1001", "many"):
            r = await stats.get("/v1/stats/operators", params={"limit": limit}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (limit, r.text)
