"""Bounded storage against real Kafka and Postgres: old event ids pruned, old texts purged, an admin erase.

Every count stays exact throughout: `switchboard reconcile` (which recounts stats from the
assigner's rows) reports no difference after a purge or an erase.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from shared.events import TOPIC_INBOUND, TOPIC_LIFECYCLE
from switchboard.reconcile import reconcile
from tests import harness
from tests.harness import Producer, eventually, operator_message, running, token, user_message

ADMIN = token("boss", "admin")


def cid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def fetch(env, sql: str, *args):
    conn = await env.connect()
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def wait_messages(env, chat_id: str, n: int):
    async def check():
        rows = await fetch(env, "SELECT message_count FROM assigner.chats WHERE chat_id = $1", chat_id)
        return rows and rows[0]["message_count"] == n

    await eventually(check, timeout=30)


async def wait_outbox_empty(env):
    async def check():
        return (await fetch(env, "SELECT count(*) AS n FROM assigner.outbox"))[0]["n"] == 0

    await eventually(check, timeout=30)


async def age_processed_events(env, schema: str, ids: list[uuid.UUID], days: float) -> None:
    """Pretend these ids were applied `days` ago."""
    conn = await env.connect()
    try:
        await conn.execute(
            f"UPDATE {schema}.processed_events SET applied_at = now() - make_interval(days => $2)"
            " WHERE event_id = ANY($1::uuid[])",
            ids,
            days,
        )
    finally:
        await conn.close()


async def test_the_assigner_prunes_only_event_ids_past_the_dedup_window_and_a_recent_redelivery_is_still_a_no_op(env):
    settings = env.with_settings(dedup_window_s=8 * 86400, retention_batch_size=2)
    chat = cid()
    recent = user_message(chat, "still in kafka")
    async with running("assigner", settings) as api, Producer(settings) as kafka:
        await kafka.send(TOPIC_INBOUND, recent)
        await wait_messages(env, chat, 1)
        old_ids = [uuid.uuid4() for _ in range(5)]  # applied long ago: Kafka no longer holds them
        conn = await env.connect()
        try:
            await conn.execute(
                "INSERT INTO assigner.processed_events (event_id, applied_at)"
                " SELECT unnest($1::uuid[]), now() - interval '9 days'",
                old_ids,
            )
            # One that is old, but not past the window: it stays.
            borderline = uuid.uuid4()
            await conn.execute(
                "INSERT INTO assigner.processed_events (event_id, applied_at)"
                " VALUES ($1, now() - interval '7 days 23 hours')",
                borderline,
            )
        finally:
            await conn.close()

        removed = await api.app.state.pruner.prune_once()
        assert removed["assigner.processed_events"] == 5  # in batches of 2: 2 + 2 + 1
        left = {r["event_id"] for r in await fetch(env, "SELECT event_id FROM assigner.processed_events")}
        assert not left & set(old_ids)
        assert {recent.event_id, borderline} <= left
        assert (await api.app.state.pruner.prune_once())["assigner.processed_events"] == 0

        # The recent event redelivered (same event id, same message) changes nothing; a marker after it
        # on the same partition proves the consumer has read past it.
        await kafka.send(TOPIC_INBOUND, recent)
        await kafka.send(TOPIC_INBOUND, user_message(chat, "marker"))
        await wait_messages(env, chat, 2)
        texts = [
            r["text"]
            for r in await fetch(env, "SELECT text FROM assigner.messages WHERE chat_id = $1 ORDER BY seq", chat)
        ]
        assert texts == ["still in kafka", "marker"]
        metrics = (await api.get("/metrics")).text
        assert 'switchboard_retention_pruned_rows_total{table="assigner.processed_events"}' in metrics


async def test_stats_prunes_only_ids_past_the_window_and_a_recent_redelivery_counts_once(env):
    settings = env.with_settings(dedup_window_s=3600)
    chat = cid()
    async with running("assigner", settings), running("stats", settings) as stats, Producer(settings) as kafka:
        await kafka.send(TOPIC_INBOUND, user_message(chat, "one"))
        await kafka.send(TOPIC_INBOUND, user_message(chat, "two"))

        async def counted():
            r = await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)
            return r.json()["user_messages"] == 2

        await eventually(counted, timeout=30)
        records = await harness.read_topic(settings, TOPIC_LIFECYCLE, min_records=3)
        recorded = [
            r.value
            for r in records
            if harness.record_json(r)["type"] == "message_recorded" and harness.record_json(r)["chat_id"] == chat
        ]
        assert len(recorded) == 2
        old, recent = (json.loads(v) for v in recorded)
        await age_processed_events(env, "stats", [uuid.UUID(old["event_id"])], days=1)

        removed = await stats.app.state.pruner.prune_once()
        assert removed == {"stats.processed_events": 1}
        ids = {r["event_id"] for r in await fetch(env, "SELECT event_id FROM stats.processed_events")}
        assert uuid.UUID(old["event_id"]) not in ids and uuid.UUID(recent["event_id"]) in ids

        # Redeliver the recent fact: skipped by its id. (A fact older than the window cannot be redelivered
        # in production, since Kafka dropped it; none is sent here.)
        async with Producer(settings) as lifecycle:
            await lifecycle.send_raw(
                TOPIC_LIFECYCLE, recorded[1], chat.encode(), headers=[("type", b"message_recorded")]
            )
        await kafka.send(TOPIC_INBOUND, user_message(chat, "three"))

        async def three():
            r = await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)
            return r.json()["user_messages"] == 3

        await eventually(three, timeout=30)
        await asyncio.sleep(0.5)
        assert (await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)).json()["user_messages"] == 3
        report = await reconcile(settings, quiesce_timeout_s=30)
        assert report.not_quiescent is None and report.differences == []


async def _chat_with_an_answer(api, kafka, env, chat: str, operator: str) -> None:
    """A user writes twice, an operator pulls and answers: three messages stored."""
    await kafka.send(TOPIC_INBOUND, user_message(chat, f"secret of {chat}"))
    await kafka.send(TOPIC_INBOUND, user_message(chat, f"card of {chat}"))
    await wait_messages(env, chat, 2)
    r = await api.post("/v1/assignments/next", headers=token(operator))
    assert r.status_code == 200 and r.json()["chat"]["chat_id"] == chat, r.text
    await kafka.send(TOPIC_INBOUND, operator_message(chat, operator, f"answer for {chat}"))
    await wait_messages(env, chat, 3)


async def test_texts_of_chats_completed_before_the_retention_are_purged_and_every_count_stays_exact(env):
    settings = env.with_settings(message_retention_days=30)
    old_chat, new_chat, open_chat = cid(), cid(), cid()
    async with running("assigner", settings) as api, running("stats", settings), Producer(settings) as kafka:
        await _chat_with_an_answer(api, kafka, env, old_chat, "op-1")
        await _chat_with_an_answer(api, kafka, env, new_chat, "op-2")
        await kafka.send(TOPIC_INBOUND, user_message(open_chat, "still open"))
        await wait_messages(env, open_chat, 1)
        for chat in (old_chat, new_chat):
            assert (await api.post(f"/v1/admin/chats/{chat}/complete", headers=ADMIN)).status_code == 200
        conn = await env.connect()
        try:
            # old_chat was completed 31 days ago; open_chat is old but not completed.
            await conn.execute(
                "UPDATE assigner.chats SET updated_at = now() - interval '31 days' WHERE chat_id = ANY($1::text[])",
                [old_chat, open_chat],
            )
        finally:
            await conn.close()

        removed = await api.app.state.pruner.prune_once()
        assert removed["assigner.messages.text"] == 3
        rows = await fetch(env, "SELECT chat_id, text, seq FROM assigner.messages ORDER BY chat_id, seq")
        by_chat = {}
        for r in rows:
            by_chat.setdefault(r["chat_id"], []).append(r["text"])
        assert by_chat[old_chat] == [None, None, None]  # the rows stay: counts are recounted from them
        assert by_chat[new_chat] == [f"secret of {new_chat}", f"card of {new_chat}", f"answer for {new_chat}"]
        assert by_chat[open_chat] == ["still open"]
        view = (await api.get(f"/v1/chats/{old_chat}", headers=ADMIN)).json()
        assert view["message_count"] == 3 and [m["text"] for m in view["messages"]] == [None, None, None]
        # Visited once: a second round finds nothing to purge.
        assert (await api.app.state.pruner.prune_once())["assigner.messages.text"] == 0

        # A purged chat that reopens keeps its new text until it is completed and old again.
        await kafka.send(TOPIC_INBOUND, user_message(old_chat, "back again"))
        await wait_messages(env, old_chat, 4)
        assert (await api.app.state.pruner.prune_once())["assigner.messages.text"] == 0
        assert (await api.get(f"/v1/chats/{old_chat}", headers=ADMIN)).json()["messages"][-1]["text"] == "back again"

        await wait_outbox_empty(env)
        report = await reconcile(settings, quiesce_timeout_s=30)
        assert report.not_quiescent is None and report.differences == []


async def test_zero_days_keeps_message_texts_forever(env):
    settings = env.with_settings(message_retention_days=0)
    async with running("assigner", settings) as api:
        assert set(await api.app.state.pruner.prune_once()) == {"assigner.processed_events"}


async def _lifecycle_value(settings, chat: str, text: str) -> bytes:
    """The raw chat.lifecycle record that carried this message text."""
    records = await harness.read_topic(settings, TOPIC_LIFECYCLE, min_records=12)
    for r in records:
        fact = harness.record_json(r)
        if fact["chat_id"] == chat and fact["type"] == "message_recorded" and fact["payload"]["text"] == text:
            return r.value
    raise AssertionError(f"no message_recorded with {text!r} on {chat}")


async def test_an_admin_erase_removes_a_chats_texts_from_every_table_and_reconcile_finds_no_difference(env):
    chat, other = cid(), cid()
    async with (
        running("assigner", env.settings) as api,
        running("stats", env.settings) as stats,
        Producer(env.settings) as kafka,
    ):
        await _chat_with_an_answer(api, kafka, env, chat, "op-1")
        await _chat_with_an_answer(api, kafka, env, other, "op-2")
        await wait_outbox_empty(env)
        published = await _lifecycle_value(env.settings, chat, f"answer for {chat}")
        before = (await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)).json()

    # The relay crashed after Kafka acknowledged this fact and before deleting it: it is still in the outbox.
    fact = json.loads(published)
    conn = await env.connect()
    try:
        await conn.execute(
            "INSERT INTO assigner.outbox (chat_id, event_id, type, envelope) VALUES ($1, $2, $3, $4)",
            chat,
            uuid.UUID(fact["event_id"]),
            fact["type"],
            published.decode(),
        )
    finally:
        await conn.close()

    async with running("assigner", env.with_settings(assigner_mode="api")) as api:
        assert (await api.delete(f"/v1/admin/chats/{chat}/content", headers=token("op-1"))).status_code == 403
        for unknown in ("no-such-chat", "not%20an%20id", "nul%00"):
            missing = await api.delete(f"/v1/admin/chats/{unknown}/content", headers=ADMIN)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "chat_not_found", unknown
        r = await api.delete(f"/v1/admin/chats/{chat}/content", headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"chat_id": chat, "texts_erased": 3}, r.text
        again = await api.delete(f"/v1/admin/chats/{chat}/content", headers=ADMIN)
        assert again.status_code == 200 and again.json() == {"chat_id": chat, "texts_erased": 0}
        view = (await api.get(f"/v1/chats/{chat}", headers=ADMIN)).json()
        assert view["message_count"] == 3
        assert [(m["sender"], m["text"]) for m in view["messages"]] == [
            ("user", None),
            ("user", None),
            ("operator", None),
        ]
        untouched = (await api.get(f"/v1/chats/{other}", headers=ADMIN)).json()
        assert [m["text"] for m in untouched["messages"]][0] == f"secret of {other}"

    # No table of any schema still holds the chat's texts.
    columns = await _text_columns(env)
    assert ("assigner", "messages", "text") in columns and ("assigner", "outbox", "envelope") in columns
    for text in (f"secret of {chat}", f"card of {chat}", f"answer for {chat}"):
        for schema, table, column in columns:
            hits = await fetch(
                env, f'SELECT count(*) AS n FROM "{schema}"."{table}" WHERE "{column}"::text LIKE $1', f"%{text}%"
            )
            assert hits[0]["n"] == 0, (schema, table, column, text)
    # The other chat's texts are still there (the check above can find a text).
    assert (await fetch(env, "SELECT count(*) AS n FROM assigner.messages WHERE text LIKE $1", f"%of {other}"))[0][
        "n"
    ] == 2
    envelope = (await fetch(env, "SELECT envelope FROM assigner.outbox WHERE chat_id = $1", chat))[0]["envelope"]
    assert json.loads(envelope)["payload"]["text"] == ""

    # The worker publishes the rewritten fact (same event id: consumers skip it); every count is exact.
    async with running("assigner", env.settings), running("stats", env.settings) as stats:
        await wait_outbox_empty(env)
        report = await reconcile(env.settings, quiesce_timeout_s=30)
        assert report.not_quiescent is None and report.differences == []
        assert (await stats.get(f"/v1/chats/{chat}/stats", headers=ADMIN)).json() == before
    assert before == {"chat_id": chat, "user_messages": 2, "operator_messages": 1, "assignments": 1}


async def _text_columns(env) -> list[tuple[str, str, str]]:
    """Every text-like column of every Switchboard schema (new tables are checked without editing this test)."""
    rows = await fetch(
        env,
        """
        SELECT table_schema, table_name, column_name FROM information_schema.columns
        WHERE table_schema IN ('assigner', 'stats', 'idle_monitor', 'ingest')
          AND data_type IN ('text', 'character varying', 'json', 'jsonb')
          AND table_name IN (SELECT table_name FROM information_schema.tables
                             WHERE table_schema = columns.table_schema AND table_type = 'BASE TABLE')""",
    )
    return [(r["table_schema"], r["table_name"], r["column_name"]) for r in rows]


async def test_ingest_prunes_only_acknowledged_keys_past_the_dedup_window(env):
    chat = cid()
    async with running("ingest", env.settings) as ingest:
        posted = await ingest.post(
            f"/v1/chats/{chat}/messages",
            headers=token("web", "frontend"),
            json={"message_id": "m-recent", "sender": "user", "text": "hi"},
        )
        assert posted.status_code == 202, posted.text
        conn = await env.connect()
        try:
            await conn.execute(
                "INSERT INTO ingest.message_keys (chat_id, message_id, event_id, envelope, created_at, acked_at) VALUES"
                " ($1, 'm-old-acked', gen_random_uuid(), NULL, now() - interval '10 days', now() - interval '9 days'),"
                " ($1, 'm-old-unacked', gen_random_uuid(), '{}', now() - interval '10 days', NULL)",
                chat,
            )
        finally:
            await conn.close()
        assert await ingest.app.state.pruner.prune_once() == {"ingest.message_keys": 1}
        left = {
            r["message_id"]
            for r in await fetch(env, "SELECT message_id FROM ingest.message_keys WHERE chat_id = $1", chat)
        }
        # An unacknowledged record is never dropped: its key holds the only copy until Kafka has it.
        assert left == {"m-recent", "m-old-unacked"}
        again = await ingest.post(
            f"/v1/chats/{chat}/messages",
            headers=token("web", "frontend"),
            json={"message_id": "m-recent", "sender": "user", "text": "hi"},
        )
        assert again.json() == {"event_id": posted.json()["event_id"], "duplicate": True}
