"""Reconcile and rebuild against real Kafka and Postgres, with the assigner's rows written by a ledger."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

from switchboard.reconcile import SHADOW_SCHEMA, rebuild, reconcile
from tests import harness
from tests.stats_facts import Ledger, publish, random_run


async def test_after_a_random_run_of_2000_facts_reconcile_finds_no_difference_and_rebuild_equals_live(env):
    ledger = Ledger()
    random_run(ledger, events=2000, operators=5, chats=60, seed=7, start=datetime(2025, 5, 31, 22, 30, tzinfo=UTC))
    assert len(ledger.facts) >= 2000
    await publish(env, ledger)
    async with harness.running("stats", env.settings):
        report = await asyncio.wait_for(reconcile(env.settings, quiesce_timeout_s=60), 90)
        assert report.not_quiescent is None
        assert report.differences == []
        assert report.compared["operator_day"] > 5 * 2  # the run spans several UTC days
        replay = await asyncio.wait_for(rebuild(env.settings, quiesce_timeout_s=30), 120)
    assert replay.differences == []
    assert replay.replayed == len(ledger.facts) and replay.duplicates == 0
    conn = await env.connect()
    try:
        assert await conn.fetchval("SELECT to_regnamespace($1)", SHADOW_SCHEMA) is None
    finally:
        await conn.close()


async def test_reconcile_prints_each_difference_and_exits_1_and_rebuild_keeps_the_shadow_schema(env):
    ledger = Ledger()
    random_run(ledger, events=300, operators=3, chats=10, seed=11, start=datetime(2025, 1, 1, tzinfo=UTC))
    await publish(env, ledger)
    async with harness.running("stats", env.settings):
        assert (await reconcile(env.settings)).differences == []
        conn = await env.connect()
        try:
            op, day = await conn.fetchrow("SELECT operator_id, day FROM stats.operator_daily ORDER BY 1, 2 LIMIT 1")
            await conn.execute(
                "UPDATE stats.operator_daily SET messages_sent = messages_sent + 2 WHERE operator_id = $1 AND day = $2",
                op,
                day,
            )
            await conn.execute(
                "UPDATE stats.chat_totals SET assignments = assignments - 1 WHERE chat_id = $1", ledger.facts[0].chat_id
            )
        finally:
            await conn.close()

        report = await reconcile(env.settings)
        found = {(d.table, d.key, d.figure, d.actual - d.expected) for d in report.differences}
        assert found == {
            ("operator_day", (op, day), "messages_sent", 2),
            ("chat", (ledger.facts[0].chat_id,), "assignments", -1),
        }

        cli = await _cli(env, "reconcile")
        assert cli[0] == 1
        assert f"operator_day {op} {day} messages_sent: assigner=" in cli[1] and "(diff +2)" in cli[1]
        assert "2 difference(s)" in cli[1]

        replay = await rebuild(env.settings)
        assert {(d.table, d.figure, d.actual - d.expected) for d in replay.differences} == {
            ("operator_day", "messages_sent", 2),
            ("chat", "assignments", -1),
        }
    conn = await env.connect()
    try:
        assert await conn.fetchval("SELECT to_regnamespace($1)", SHADOW_SCHEMA) is not None
    finally:
        await conn.close()


async def test_the_reconcile_command_exits_0_when_stats_agrees(env):
    ledger = Ledger()
    random_run(ledger, events=100, operators=2, chats=5, seed=3, start=datetime(2025, 2, 1, tzinfo=UTC))
    await publish(env, ledger)
    async with harness.running("stats", env.settings):
        code, out = await _cli(env, "reconcile")
        assert code == 0, out
        assert "no differences" in out
        code, out = await _cli(env, "stats", "rebuild")
        assert code == 0, out
        assert f"replayed {len(ledger.facts)} event(s)" in out


async def _cli(env, *args: str) -> tuple[int, str]:
    s = env.settings
    environ = dict(
        os.environ,
        SWITCHBOARD_DATABASE_URL=s.database_url,
        SWITCHBOARD_TOPIC_PREFIX=s.topic_prefix,
        SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        SWITCHBOARD_AUTH_SECRET=s.auth_secret,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchboard",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()
