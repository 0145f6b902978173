"""Routed pulls on real Postgres (docs/contract.md "Routing"): queues, skills with relaxation, priority,
per-operator capacity and presence, under concurrency; a clock the test moves instead of sleeping."""

import asyncio
import json
import random

import pytest

from services.assigner import routing
from services.assigner.repository import QUERIES
from services.assigner.routing import Profile, Queue
from services.assigner.routing_usecases import RoutingCommands
from services.assigner.usecases import NOTHING, Assigner, OperatorCommand, Pulled
from shared.db import create_pool
from shared.events import Routing, UserMessage, UserMessagePayload, new_event_id, operator_key, utcnow
from tests.integration.test_assigner_usecases import MovedClock


def routed_message(chat_id: str, message_id: str = "m-1", **routing) -> UserMessage:
    payload = UserMessagePayload(message_id=message_id, text="hi", routing=Routing(**routing) if routing else None)
    return UserMessage(event_id=new_event_id(), chat_id=chat_id, occurred_at=utcnow(), producer="test", payload=payload)


@pytest.fixture
async def floor(env):
    """An Assigner and its routing commands on a fresh database, with a clock the test moves."""
    clock = MovedClock()
    pool = await create_pool(env.database_url, min_size=1, max_size=12)
    assigner = Assigner(pool, env.settings, clock=clock)
    try:
        yield assigner, RoutingCommands(assigner), clock
    finally:
        await pool.close()


async def arrive(assigner: Assigner, clock: MovedClock, chat_id: str, step_s: float = 1, **routing) -> None:
    async with assigner.pool.acquire() as conn, conn.transaction():
        await assigner.apply_events(conn, [routed_message(chat_id, f"m-{clock.now.timestamp()}", **routing)])
    clock.advance(step_s)


async def pull(assigner: Assigner, operator_id: str):
    (result,), _ = await assigner.operator_batch([OperatorCommand("pull", operator_id)])
    return result


async def fetch(assigner: Assigner, sql: str, *args):
    async with assigner.pool.acquire() as conn:
        return await conn.fetch(sql, *args)


async def test_operators_get_only_their_queues_and_skills_in_rank_order(floor):
    assigner, commands, clock = floor
    await commands.put_queue(Queue("billing", "Billing", priority_step_s=10))
    await commands.put_operator(Profile("op-bill", queues=("billing",), skills=frozenset({"de"})))
    await arrive(assigner, clock, "plain")  # default queue
    await arrive(assigner, clock, "bill-old", queue="billing")
    await arrive(assigner, clock, "bill-de", queue="billing", skills=["de"])
    await arrive(assigner, clock, "bill-vip", queue="billing", skills=["vip"])
    await arrive(assigner, clock, "bill-urgent", queue="billing", priority=1)  # rank 4 - 10: first
    got = []
    for _ in range(4):
        result, _ = await pull(assigner, "op-bill")
        got.append(result.chat_id)
        await assigner.operator_batch([OperatorCommand("complete", "op-bill", result.assignment_id)])
    assert got == ["bill-urgent", "bill-old", "bill-de", None]  # never default, never the vip chat
    plain, _ = await pull(assigner, "op-default")
    assert plain.chat_id == "plain"
    # Each assignment records the queue it started in (reconcile recounts stats' per-queue figure).
    rows = await fetch(assigner, "SELECT chat_id, queue_id FROM assigner.assignments")
    assert {r["chat_id"]: r["queue_id"] for r in rows} == {
        "bill-urgent": "billing",
        "bill-old": "billing",
        "bill-de": "billing",
        "plain": "default",
    }


async def test_a_chat_whose_skills_nobody_has_goes_to_a_member_once_the_queue_relaxes_them(floor):
    assigner, commands, clock = floor
    await commands.put_queue(Queue("default", "Default", skills_relax_after_s=30))
    await arrive(assigner, clock, "needs-fr", skills=["fr"])
    assert await pull(assigner, "op-a") == (NOTHING, None)
    clock.advance(28.999)
    assert await pull(assigner, "op-a") == (NOTHING, None)
    clock.advance(0.001)
    got, view = await pull(assigner, "op-a")
    assert got.chat_id == "needs-fr" and view["skills"] == ["fr"]


async def test_an_unknown_queue_sends_the_chat_to_default_and_is_recorded_as_a_fallback(floor):
    assigner, _, clock = floor
    await arrive(assigner, clock, "lost", queue="nowhere", priority=2)
    (row,) = await fetch(assigner, "SELECT queue_id, priority FROM assigner.chats WHERE chat_id = 'lost'")
    assert tuple(row) == ("default", 2)
    facts = await fetch(assigner, "SELECT type, envelope::json -> 'payload' AS p FROM assigner.outbox ORDER BY id")
    routed = [f for f in facts if f["type"] == "chat_routed"]
    assert len(routed) == 1 and '"requested_queue":"nowhere"' in routed[0]["p"].replace(" ", "")
    got, _ = await pull(assigner, "op-a")
    assert got.chat_id == "lost"


async def test_away_refuses_pulls_and_offline_returns_held_chats_keeping_their_waiting_time(floor):
    assigner, commands, clock = floor
    await commands.put_operator(Profile("op-a", capacity=2))
    await arrive(assigner, clock, "c1")
    await arrive(assigner, clock, "c2")
    first, _ = await pull(assigner, "op-a")
    second, _ = await pull(assigner, "op-a")
    await commands.set_status("op-a", "away", "self")
    (refused,), _ = await assigner.operator_batch([OperatorCommand("pull", "op-a")])
    assert isinstance(refused, routing.OperatorUnavailable)
    before = {r["chat_id"]: r["waiting_since"] for r in await fetch(assigner, "SELECT * FROM assigner.chats")}
    profile = await commands.set_status("op-a", "offline", "self")
    assert profile["status"] == "offline"
    rows = await fetch(assigner, "SELECT chat_id, state, waiting_since FROM assigner.chats ORDER BY chat_id")
    assert [(r["chat_id"], r["state"]) for r in rows] == [("c1", "waiting_assignment"), ("c2", "waiting_assignment")]
    assert all(r["waiting_since"] == before[r["chat_id"]] for r in rows)
    ended = await fetch(
        assigner,
        "SELECT outcome FROM assigner.assignments WHERE assignment_id = ANY($1::uuid[])",
        [first.assignment_id, second.assignment_id],
    )
    assert [r["outcome"] for r in ended] == ["released", "released"]
    status = await fetch(
        assigner, "SELECT chat_id, envelope FROM assigner.outbox WHERE type = 'operator_status_changed'"
    )
    assert len(status) == 2 and '"returned_chats":2' in status[-1]["envelope"]
    assert await pull(assigner, "op-b") != (NOTHING, None)


async def test_deleting_a_queue_moves_its_waiting_chats_to_default_keeping_their_waiting_time(floor):
    assigner, commands, clock = floor
    await commands.put_queue(Queue("sales", "Sales"))
    await commands.put_operator(Profile("op-s", queues=("sales",)))
    await arrive(assigner, clock, "s1", queue="sales")
    (before,) = await fetch(assigner, "SELECT waiting_since FROM assigner.chats WHERE chat_id = 's1'")
    assert await commands.delete_queue("sales") == 1
    (after,) = await fetch(assigner, "SELECT queue_id, waiting_since, rank FROM assigner.chats WHERE chat_id = 's1'")
    assert (after["queue_id"], after["waiting_since"], after["rank"]) == ("default", before[0], before[0])
    assert (await commands.get_operator("op-s"))["queues"] == []
    with pytest.raises(routing.DefaultQueueKept):
        await commands.delete_queue("default")
    # Each profile change is a fact (delivery follows an operator's queues): put, the lost queue, removal.
    await commands.delete_operator("op-s")
    facts = await fetch(
        assigner,
        "SELECT chat_id, envelope::json -> 'payload' AS p FROM assigner.outbox"
        " WHERE type = 'operator_profile_changed' ORDER BY id",
    )
    payloads = [json.loads(f["p"]) for f in facts]
    assert {f["chat_id"] for f in facts} == {operator_key("op-s")}
    assert [(p["queues"], p["removed"]) for p in payloads] == [(["sales"], False), ([], False), (["default"], True)]


async def test_many_operators_pulling_at_once_never_share_a_chat_exceed_their_capacity_or_lack_a_skill(floor):
    assigner, commands, clock = floor
    rnd = random.Random(16)
    await commands.put_queue(Queue("sales", "Sales", priority_step_s=5))
    skill_sets = [[], ["de"], ["vip"], ["de", "vip"]]
    profiles = []
    for i in range(16):
        queues = rnd.choice([("default",), ("sales",), ("default", "sales")])
        skills = frozenset(rnd.choice(skill_sets))
        profile = Profile(f"op-{i:02d}", queues=queues, skills=skills, capacity=rnd.choice([1, 2, 3]))
        profiles.append(profile)
        await commands.put_operator(profile)
    chats = {}
    async with assigner.pool.acquire() as conn, conn.transaction():
        events = []
        for n in range(300):
            queue, skills = rnd.choice(["default", "sales"]), rnd.choice(skill_sets)
            chats[f"c-{n:03d}"] = (queue, set(skills))
            events.append(routed_message(f"c-{n:03d}", queue=queue, skills=skills, priority=rnd.randint(0, 9)))
        await assigner.apply_events(conn, events)
    by_id = {p.operator_id: p for p in profiles}

    async def operator(profile: Profile):
        for _ in range(40):
            (got,), changes = await assigner.operator_batch([OperatorCommand("pull", profile.operator_id)])
            assigner.count_outcomes(changes)
            pulled, _ = got
            assert isinstance(pulled, Pulled)
            if pulled.chat_id is None:
                return
            queue, skills = chats[pulled.chat_id]
            assert queue in profile.queues and skills <= profile.skills, (profile, pulled.chat_id)
            await asyncio.sleep(0)
            if rnd.random() < 0.7:
                await assigner.operator_batch([OperatorCommand("complete", profile.operator_id, pulled.assignment_id)])

    # Pulls of several operators at the same instant also share batches (one transaction).
    async def batch_of_pulls():
        for _ in range(10):
            ops = rnd.sample(profiles, 4)
            results, _ = await assigner.operator_batch([OperatorCommand("pull", p.operator_id) for p in ops])
            for p, (pulled, _) in zip(ops, results):
                if pulled.chat_id is not None:
                    queue, skills = chats[pulled.chat_id]
                    assert queue in p.queues and skills <= p.skills

    await asyncio.gather(*(operator(p) for p in profiles), batch_of_pulls(), batch_of_pulls())
    rows = await fetch(
        assigner,
        """
        SELECT a.operator_id, a.chat_id, count(*) AS n FROM assigner.assignments a
        JOIN assigner.assignments b ON a.operator_id = b.operator_id
         AND b.started_at <= a.started_at AND coalesce(b.ended_at, 'infinity') > a.started_at
        GROUP BY a.assignment_id, a.operator_id, a.chat_id""",
    )
    assert rows, "some chats were assigned"
    for r in rows:
        assert r["n"] <= by_id[r["operator_id"]].capacity, r  # never over its own capacity
        queue, skills = chats[r["chat_id"]]
        assert queue in by_id[r["operator_id"]].queues and skills <= by_id[r["operator_id"]].skills
    shared = await fetch(
        assigner,
        """
        SELECT a.chat_id FROM assigner.assignments a JOIN assigner.assignments b
          ON a.chat_id = b.chat_id AND a.assignment_id <> b.assignment_id
         AND b.started_at <= a.started_at AND coalesce(b.ended_at, 'infinity') > a.started_at""",
    )
    assert shared == []  # no chat held by two operators at once


async def test_the_routed_claim_and_the_lane_scan_are_index_probes_however_many_chats_wait(floor):
    assigner, _, _ = floor
    async with assigner.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO assigner.queues (queue_id, name) SELECT 'q' || g, 'Q' FROM generate_series(1, 20) g"
        )
        await conn.execute("""
            INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, rank, queue_id, skills, priority,
                                        message_count, created_at, updated_at)
            SELECT 'w-' || g, 'waiting_assignment', now() - g * interval '1 second', now(),
                   now() - g * interval '1 second', 'q' || (g % 20 + 1),
                   string_to_array((ARRAY['', 'de', 'vip', 'de,vip'])[g % 4 + 1], ','), g % 10,
                   1, now(), now()
            FROM generate_series(1, 50000) g""")
        await conn.execute("ANALYZE assigner.chats")
        lanes = await conn.fetch("EXPLAIN " + QUERIES.waiting_lanes, ["q1", "q2", "q3"])
        claim = await conn.fetch(
            "EXPLAIN " + QUERIES.claim_lanes,
            ["q1", "q2"],
            ["", "de,vip"],
            [5, 5],
            [None, utcnow()],
            None,
            [None, None],
            [],
        )
    for plan in ("\n".join(r[0] for r in lanes), "\n".join(r[0] for r in claim)):
        assert "chats_lane_idx" in plan, plan
        assert "Seq Scan on chats" not in plan and "Sort" not in plan, plan
    # And each step of the lane scan positions the index scan: under a generic plan (what the
    # assigner's prepared statement gets after five runs) a row comparison under `queue_id = ANY(...)`
    # only filtered, so it read every waiting chat of the queues however few lanes there were
    # (39,852 buffers for 24 lanes at 1M, against 177; here 1,267 against 33). Here: 3 lanes among 7,500 chats.
    async with assigner.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        raw = await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES.waiting_lanes, ["q1", "q2", "q3"]
        )
    top = json.loads(raw)[0]["Plan"]
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    assert top["Actual Rows"] == 3 and buffers <= 20 * 3, (buffers, top["Actual Rows"])


async def test_the_lane_scan_finds_every_lane_with_its_lowest_waiting_rank(floor):
    # One probe per lane gives both the lane and its head: checked against a plain GROUP BY over
    # lanes of mixed sizes, with held chats (outside the partial index) ranked before every head.
    assigner, _, _ = floor
    async with assigner.pool.acquire() as conn:
        await conn.execute("INSERT INTO assigner.queues (queue_id, name) VALUES ('qa', 'A'), ('qb', 'B'), ('qc', 'C')")
        await conn.execute("""
            INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, rank, queue_id, skills, priority,
                                        message_count, created_at, updated_at, assigned_operator_id, assignment_id)
            SELECT 'l-' || g, CASE WHEN g % 7 = 0 THEN 'assigned' ELSE 'waiting_assignment' END,
                   now() - (g * 37 % 1000) * interval '1 second', now(),
                   now() - (g * 37 % 1000) * interval '1 second' - (g % 10) * interval '1 minute',
                   (ARRAY['qa', 'qb', 'qc'])[g % 3 + 1],
                   string_to_array((ARRAY['', 'de', 'billing,de', 'fr', 'en,fr'])[g * 13 % 5 + 1], ','), g % 10,
                   1, now(), now(), CASE WHEN g % 7 = 0 THEN 'op-held' END,
                   CASE WHEN g % 7 = 0 THEN gen_random_uuid() END
            FROM generate_series(1, 2000) g WHERE g % 3 <> 2 OR g % 5 < 2""")
        expected = {
            (r["queue_id"], tuple(r["skills"])): r["head"]
            for r in await conn.fetch("""
                SELECT queue_id, skills, min(rank) AS head FROM assigner.chats
                WHERE state = 'waiting_assignment' AND queue_id IN ('qa', 'qc') GROUP BY queue_id, skills""")
        }
        found = await assigner.repo.waiting_lanes(conn, ["qa", "qc", "empty"])
    assert len({k for k in expected if k[0] == "qa"}) == 5 and len({k for k in expected if k[0] == "qc"}) >= 2
    assert {(lane.queue_id, lane.skills): lane.head for lane in found} == expected
    assert len(found) == len(expected)  # each lane once
