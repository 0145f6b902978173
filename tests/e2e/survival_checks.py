"""What the survival test checks after the storm: the docs/contract.md §3 invariants over the whole history,
chat.lifecycle against the assigner's tables, and topic end offsets."""

from __future__ import annotations

import collections
import time
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import LIFECYCLE, TOPIC_LIFECYCLE


async def topic_records(settings, topic: str, timeout: float = 90) -> list:
    """Every record of a topic, read up to the end offsets as of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic(topic), p) for p in await _partitions(consumer, settings.topic(topic))]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        out = []
        deadline = time.monotonic() + timeout
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"reading {topic} took longer than {timeout}s"
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def end_offsets_total(settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic(topic), p) for p in await _partitions(consumer, settings.topic(topic))]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def check_invariants(conn: asyncpg.Connection, capacity: int) -> None:
    """docs/contract.md §3 invariants, over the whole history the database kept."""
    # 1: assigned <=> operator set <=> exactly one active assignment, and it is the chat's current one.
    assert (
        await conn.fetchval("""
        SELECT count(*) FROM assigner.chats c
        LEFT JOIN assigner.assignments a ON a.chat_id = c.chat_id AND a.ended_at IS NULL
        WHERE (c.state = 'assigned') <> (a.assignment_id IS NOT NULL)
           OR (c.state = 'assigned' AND (a.assignment_id <> c.assignment_id
                                         OR a.operator_id <> c.assigned_operator_id))""")
        == 0
    )
    # 1 and 4 over time: one chat's assignments never overlap (nobody shared a chat).
    overlaps = await conn.fetch("""
        SELECT a.chat_id, a.operator_id AS a_op, a.started_at AS a_start, a.ended_at AS a_end, a.outcome AS a_out,
               b.operator_id AS b_op, b.started_at AS b_start, b.ended_at AS b_end, b.outcome AS b_out
          FROM assigner.assignments a JOIN assigner.assignments b
          ON a.chat_id = b.chat_id AND a.assignment_id <> b.assignment_id
         AND b.started_at >= a.started_at AND b.started_at < coalesce(a.ended_at, 'infinity')
         ORDER BY a.chat_id LIMIT 10""")
    assert not overlaps, [dict(r) for r in overlaps]
    # 2: never more than `capacity` active assignments per operator at any moment.
    over = await conn.fetchval("""
        SELECT coalesce(max(n), 0) FROM (
          SELECT a.assignment_id, count(*) AS n FROM assigner.assignments a
          JOIN assigner.assignments b ON a.operator_id = b.operator_id
           AND b.started_at <= a.started_at AND coalesce(b.ended_at, 'infinity') > a.started_at
          GROUP BY a.assignment_id) x""")
    assert over <= capacity
    # 5: each chat's messages are numbered 1..n in apply order and counted once.
    assert (
        await conn.fetchval("""
        SELECT count(*) FROM assigner.chats c
        LEFT JOIN (SELECT chat_id, count(*) AS n, max(seq) AS top, min(seq) AS low
                   FROM assigner.messages GROUP BY chat_id) m USING (chat_id)
        WHERE c.message_count <> coalesce(m.n, 0) OR coalesce(m.top, 0) <> coalesce(m.n, 0)
           OR coalesce(m.low, 1) <> 1""")
        == 0
    )
    # Every ended assignment has its outcome; a waiting chat has its queue position.
    assert (
        await conn.fetchval("""SELECT count(*) FROM assigner.chats WHERE state = 'waiting_assignment'
                                  AND (waiting_since IS NULL OR queued_at IS NULL)""")
        == 0
    )


def anti_repeat_violations(facts: list, cooldown_s: float) -> tuple[list[str], collections.Counter]:
    """docs/contract.md §3 invariant 3 over a history: replays each chat's distinct lifecycle facts (in their
    per-chat order) to know its last operator and `queued_at` at every pull; a pull by the last
    operator less than the cooldown after `queued_at`, or of a chat that was not waiting, is a
    violation. Returns the violations and what was checked."""
    cooldown = timedelta(seconds=cooldown_s)
    chats: dict[str, dict] = collections.defaultdict(lambda: {"state": None, "last": None, "queued_at": None})
    checked: collections.Counter = collections.Counter()
    bad: list[str] = []
    for f in facts:
        c, p = chats[f.chat_id], f.payload
        if f.type == "chat_queued":
            c["state"], c["queued_at"] = "waiting", p.queued_at
        elif f.type == "chat_assigned" and p.via == "pull":
            checked["pulls"] += 1
            if c["state"] != "waiting":
                bad.append(f"{f.chat_id}: pulled by {p.operator_id} while {c['state']}")
            elif p.operator_id == c["last"]:
                if p.assigned_at - c["queued_at"] < cooldown:
                    bad.append(
                        f"{f.chat_id}: back to its last operator {p.operator_id} "
                        f"{(p.assigned_at - c['queued_at']).total_seconds():.3f}s after it was queued"
                    )
                else:
                    checked["pulled back by the last operator after the cooldown"] += 1
            c["state"] = "assigned"
        elif f.type == "chat_assigned":  # an admin's reassign: the new operator is the last one
            c["state"], c["last"] = "assigned", p.operator_id
        elif f.type == "assignment_ended":  # what follows (queued, answered, completed, assigned) says where it went
            c["state"] = "ended"
            if p.outcome in ("answered", "released", "timed_out"):
                c["last"] = p.operator_id
        elif f.type == "chat_answered":
            c["state"], c["last"] = "waiting_user", p.operator_id
        elif f.type == "chat_completed":
            c["state"], c["queued_at"] = "completed", None
        elif f.type == "message_recorded" and p.sender == "operator" and c["state"] == "waiting_user":
            c["last"] = p.operator_id  # another reply to an answered chat: its author is the last operator
    return bad, checked


async def check_lifecycle(settings, conn: asyncpg.Connection) -> dict:
    """The outbox reached chat.lifecycle whole and, per chat, in the order the facts were written;
    no pull in that whole history broke the anti-repeat rule."""
    facts = [LIFECYCLE.validate_json(r.value) for r in await topic_records(settings, TOPIC_LIFECYCLE)]
    seen: set = set()
    distinct = []
    recorded: dict[str, list[str]] = collections.defaultdict(list)
    assigned, ended = {}, {}
    for f in facts:
        if f.event_id in seen:  # republished after a relay crash: same id, consumers skip it
            continue
        seen.add(f.event_id)
        distinct.append(f)
        if f.type == "message_recorded":
            recorded[f.chat_id].append(f.payload.message_id)
        elif f.type == "chat_assigned":
            assigned[f.payload.assignment_id] = f.payload.operator_id
        elif f.type == "assignment_ended":
            ended[f.payload.assignment_id] = f.payload.outcome
    stored = collections.defaultdict(list)
    for row in await conn.fetch("SELECT chat_id, message_id FROM assigner.messages ORDER BY chat_id, seq"):
        stored[row["chat_id"]].append(row["message_id"])
    assert recorded == stored, "message_recorded facts differ from the stored messages or their order"
    rows = await conn.fetch("SELECT assignment_id, operator_id, outcome FROM assigner.assignments")
    assert assigned == {r["assignment_id"]: r["operator_id"] for r in rows}
    assert ended == {r["assignment_id"]: r["outcome"] for r in rows if r["outcome"] is not None}
    violations, checked = anti_repeat_violations(distinct, settings.repeat_cooldown_s)
    assert not violations, violations[:20]
    return {
        "facts": len(facts),
        "distinct": len(seen),
        "assignments": len(rows),
        "outcomes": collections.Counter(ended.values()),
        "anti-repeat": dict(checked),
    }
