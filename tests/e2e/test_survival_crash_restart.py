"""Crash and restart under load: the four services as real processes on a Kafka broker and a
PostgreSQL cluster of this test's own, so both can be restarted without touching the shared ones.

Users write through Kafka and through ingest, operators pull, reply, release and complete over
HTTP, an admin reassigns, sleepy operators let the idle monitor take chats back. Meanwhile the
assigner is SIGKILLed three times, stats, the idle monitor and ingest once each, every Postgres
session is terminated twice, the broker and the cluster are restarted. Afterwards every
accepted message is stored exactly once, the SPEC §3 invariants hold, the outbox is drained and
was published in order and complete, idle timers match the active assignments, and
`switchboard reconcile` finds no difference.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import LIFECYCLE, TOPIC_DLQ, TOPIC_INBOUND, TOPIC_LIFECYCLE, encode
from shared.kafka import ensure_topics, make_producer
from tests import harness
from tests.e2e.procs import Fleet, OwnKafka, OwnPostgres, PYTHON, REPO, service_env, terminate_backends

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

SERVICES = ("ingest", "assigner", "idle_monitor", "stats")
KAFKA_CHATS = 1200
KAFKA_MESSAGES = 17_000
INGEST_CHATS = 300
INGEST_MESSAGES = 3_000
INGEST_BATCH = 50
TRAFFIC_S = 66.0
ACTIVE_OPERATORS = 8
SLEEPY_OPERATORS = 2
CAPACITY = 2
RETRYABLE = (httpx.TransportError,)


@pytest.fixture
async def own_world(infra, tmp_path):
    """A PostgreSQL cluster and a Kafka broker of this test's own, a migrated database, topics."""
    pg = OwnPostgres()
    kafka = OwnKafka()
    try:
        pg.init()
        pg.start()
        await kafka.start()
        database = await harness.create_template(pg.url())
        settings = harness.make_settings(
            harness.with_db(pg.url(), database), f"surv{uuid.uuid4().hex[:6]}.",
            kafka_bootstrap_servers=kafka.bootstrap, topic_partitions=6, idle_timeout_s=2.0,
            idle_check_interval_s=0.2, repeat_cooldown_s=1.0, operator_capacity=CAPACITY, db_pool_max=8,
            consumer_poll_timeout_ms=100, kafka_send_timeout_s=5,
        )
        await ensure_topics(settings)
        yield pg, kafka, settings, database
    finally:
        await kafka.destroy()
        pg.destroy()


class Run:
    """What the simulated users and operators did, and what came back."""

    def __init__(self, settings, fleet: Fleet):
        self.settings = settings
        self.fleet = fleet
        self.rng = random.Random(20250601)
        self.expected: set[tuple[str, str]] = set()  # (chat_id, message_id) acknowledged by Kafka or ingest
        self.attempted: set[tuple[str, str]] = set()  # also those whose answer never came (they may be stored)
        self.status = collections.Counter()  # (service, status) of every HTTP answer
        self.server_errors: list[str] = []
        self.progress = collections.Counter()
        self.pulls = 0
        self.replies = 0
        self.stop = asyncio.Event()
        self.frontend = harness.token("web", "frontend")
        self.admin = harness.token("boss", "admin")

    def url(self, service: str) -> str:
        return self.fleet[service].url

    async def call(self, client: httpx.AsyncClient, service: str, method: str, path: str, *,
                   retry_until: set[int], deadline: float, **kwargs) -> httpx.Response | None:
        """One HTTP call, retried while the service is down or answers 503; None if time ran out."""
        while time.monotonic() < deadline:
            try:
                r = await client.request(method, self.url(service) + path, timeout=15, **kwargs)
            except RETRYABLE:
                self.status[(service, "down")] += 1
                await asyncio.sleep(0.3)
                continue
            self.status[(service, r.status_code)] += 1
            if r.status_code >= 500 and r.status_code != 503:
                self.server_errors.append(f"{service} {method} {path} -> {r.status_code} {r.text[:300]}")
            if r.status_code in retry_until or r.status_code < 500 and r.status_code not in (408, 429):
                return r
            await asyncio.sleep(0.3)
        return None


def kafka_plan(rng: random.Random) -> list[list]:
    """User messages for Kafka-direct chats, in chunks; some chunks repeat events (redelivery)
    and some repeat a message id under a new event id (a frontend retrying)."""
    chats = [f"k-{i:04d}" for i in range(KAFKA_CHATS)]
    events = []
    for n in range(KAFKA_MESSAGES):
        chat = chats[n] if n < KAFKA_CHATS else rng.choice(chats)
        events.append(harness.user_message(chat, text=f"user says {n}", message_id=f"u-{n}"))
    chunks = [events[i:i + 250] for i in range(0, len(events), 250)]
    for i, chunk in enumerate(chunks):
        if i % 6 == 5:
            chunk.extend(rng.sample(chunks[i - 1], 20))
        if i % 9 == 8:
            for ev in rng.sample(chunks[i - 1], 10):
                chunk.append(harness.user_message(ev.chat_id, text=ev.payload.text, message_id=ev.payload.message_id))
    return chunks


async def send_chunk(run: Run, producer, chunk: list) -> None:
    futures = [await producer.send(run.settings.topic(TOPIC_INBOUND), value=encode(ev), key=ev.chat_id.encode())
               for ev in chunk]
    await asyncio.gather(*futures)


async def produce_kafka_users(run: Run) -> None:
    """Publish the chunks paced over the run; a failed chunk is sent again whole with a new producer."""
    chunks = kafka_plan(run.rng)
    pace = TRAFFIC_S / len(chunks)
    producer = make_producer(run.settings, request_timeout_ms=8000)
    await producer.start()
    deadline = time.monotonic() + TRAFFIC_S + 120
    try:
        for chunk in chunks:
            started = time.monotonic()
            while True:
                assert time.monotonic() < deadline, "Kafka never took the user messages back"
                try:
                    await asyncio.wait_for(send_chunk(run, producer, chunk), 30)
                    break
                except Exception:
                    run.progress["kafka chunk retries"] += 1
                    await asyncio.sleep(0.5)
                    try:
                        await asyncio.wait_for(producer.stop(), 10)
                    except Exception:
                        pass
                    producer = make_producer(run.settings, request_timeout_ms=8000)
                    try:
                        await asyncio.wait_for(producer.start(), 10)
                    except Exception:
                        await asyncio.sleep(0.5)
            run.expected.update((ev.chat_id, ev.payload.message_id) for ev in chunk)
            run.progress["kafka chunks"] += 1
            await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))
    finally:
        await producer.stop()


async def produce_ingest_users(run: Run, client: httpx.AsyncClient) -> None:
    """User messages through ingest's batch endpoint; a batch is retried whole until every item is 202."""
    chats = [f"h-{i:04d}" for i in range(INGEST_CHATS)]
    batches = []
    for b in range(INGEST_MESSAGES // INGEST_BATCH):
        items = []
        for j in range(INGEST_BATCH):
            n = b * INGEST_BATCH + j
            chat = chats[n] if n < INGEST_CHATS else run.rng.choice(chats)
            items.append({"chat_id": chat, "message_id": f"h-{n}", "sender": "user", "text": f"hello {n}"})
        batches.append(items)
    pace = TRAFFIC_S / len(batches)
    deadline = time.monotonic() + TRAFFIC_S + 120
    for items in batches:
        started = time.monotonic()
        while True:
            r = await run.call(client, "ingest", "POST", "/v1/messages:batch", json={"messages": items},
                               headers=run.frontend, retry_until={200}, deadline=deadline)
            assert r is not None, "ingest never accepted a batch"
            if r.status_code == 200:
                body = r.json()
                assert body["rejected"] == 0, body
                break
            assert r.status_code == 503, r.text
        run.expected.update((i["chat_id"], i["message_id"]) for i in items)
        run.progress["ingest batches"] += 1
        await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))


async def reply(run: Run, client: httpx.AsyncClient, op: str, chat_id: str, deadline: float) -> None:
    """The operator's frontend posts the reply through ingest (retried with the same message id)."""
    message_id = f"r-{op}-{uuid.uuid4().hex[:10]}"
    run.attempted.add((chat_id, message_id))
    r = await run.call(client, "ingest", "POST", f"/v1/chats/{chat_id}/messages", headers=run.frontend,
                       json={"message_id": message_id, "sender": "operator", "operator_id": op, "text": "on it"},
                       retry_until={202}, deadline=deadline)
    if r is not None and r.status_code == 202:
        run.expected.add((chat_id, message_id))
        run.replies += 1


async def operator(run: Run, client: httpx.AsyncClient, op: str, sleepy: bool) -> None:
    """Pull, then reply, release or complete; a sleepy operator never acts (the idle monitor takes it back)."""
    headers = harness.token(op)
    rng = random.Random(op)
    while not run.stop.is_set():
        deadline = time.monotonic() + 30
        r = await run.call(client, "assigner", "POST", "/v1/assignments/next", headers=headers,
                           retry_until={200, 204}, deadline=deadline)
        if r is None or r.status_code == 204:
            await asyncio.sleep(0.3)
            continue
        assert r.status_code == 200, r.text
        run.pulls += 1
        body = r.json()
        assignment, chat_id = body["assignment_id"], body["chat"]["chat_id"]
        if sleepy:
            await asyncio.sleep(3.0)
            continue
        roll = rng.random()
        if roll < 0.7:
            await reply(run, client, op, chat_id, deadline)
        elif roll < 0.8:
            r = await run.call(client, "assigner", "GET", f"/v1/chats/{chat_id}", headers=headers,
                               retry_until={200, 403}, deadline=deadline)
            assert r is None or r.status_code in (200, 403), r.text
        elif roll < 0.9:
            r = await run.call(client, "assigner", "POST", f"/v1/assignments/{assignment}/release",
                               headers=headers, retry_until={200, 403, 409}, deadline=deadline)
            assert r is None or r.status_code in (200, 403, 409), r.text
        else:
            r = await run.call(client, "assigner", "POST", f"/v1/assignments/{assignment}/complete",
                               headers=headers, retry_until={200, 403, 409}, deadline=deadline)
            assert r is None or r.status_code in (200, 403, 409), r.text
        await asyncio.sleep(0.05)


async def admin(run: Run, client: httpx.AsyncClient, operators: list[str]) -> None:
    """Every second or so: read the queue, reassign a chat to some operator."""
    rng = random.Random("admin")
    while not run.stop.is_set():
        deadline = time.monotonic() + 30
        r = await run.call(client, "assigner", "GET", "/v1/admin/queue", headers=run.admin,
                           retry_until={200}, deadline=deadline)
        assert r is None or r.status_code == 200, r.text
        chat = f"k-{rng.randrange(KAFKA_CHATS):04d}"
        r = await run.call(client, "assigner", "POST", f"/v1/admin/chats/{chat}/reassign", headers=run.admin,
                           json={"operator_id": rng.choice(operators)}, retry_until={200, 404, 409},
                           deadline=deadline)
        assert r is None or r.status_code in (200, 404, 409), r.text
        await asyncio.sleep(1.0)


async def inject_faults(run: Run, pg: OwnPostgres, kafka: OwnKafka, database: str, log: list) -> None:
    """The fault schedule, relative to the start of traffic."""
    fleet = run.fleet
    started = time.monotonic()

    def note(what: str):
        log.append((round(time.monotonic() - started, 1), what))
        print(f"[survival] t={log[-1][0]}s {what} progress={dict(run.progress)}", flush=True)

    async def at(t: float):
        await asyncio.sleep(max(0.0, t - (time.monotonic() - started)))

    async def sigkill(name: str):
        fleet[name].kill()
        note(f"SIGKILL {name}")
        await asyncio.sleep(0.5)
        await fleet[name].restart()
        note(f"{name} ready again")

    async def terminate():
        n = await terminate_backends(pg.url(), database)
        note(f"pg_terminate_backend x{n}")
        assert n > 0

    await at(5)
    await sigkill("assigner")
    await at(11)
    await sigkill("stats")
    await at(16)
    await terminate()
    await at(21)
    await sigkill("assigner")
    await at(27)
    await sigkill("idle_monitor")
    await at(32)
    await kafka.stop()
    note("Kafka stopped")
    await asyncio.sleep(3)
    await kafka.start()
    note("Kafka started")
    await at(42)
    await sigkill("ingest")
    await at(48)
    await asyncio.to_thread(pg.stop, "immediate")
    note("Postgres stopped (immediate)")
    await asyncio.sleep(3)
    await asyncio.to_thread(pg.start)
    note("Postgres started")
    await at(56)
    await sigkill("assigner")
    await at(61)
    await terminate()


async def topic_records(settings, topic: str, timeout: float = 90) -> list:
    """Every record of a topic, read up to the end offsets as of now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=5000)
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
    """SPEC §3 invariants, over the whole history the database kept."""
    # 1: assigned <=> operator set <=> exactly one active assignment, and it is the chat's current one.
    assert await conn.fetchval("""
        SELECT count(*) FROM assigner.chats c
        LEFT JOIN assigner.assignments a ON a.chat_id = c.chat_id AND a.ended_at IS NULL
        WHERE (c.state = 'assigned') <> (a.assignment_id IS NOT NULL)
           OR (c.state = 'assigned' AND (a.assignment_id <> c.assignment_id
                                         OR a.operator_id <> c.assigned_operator_id))""") == 0
    # 1 and 4 over time: one chat's assignments never overlap (nobody shared a chat).
    assert await conn.fetchval("""
        SELECT count(*) FROM assigner.assignments a JOIN assigner.assignments b
          ON a.chat_id = b.chat_id AND a.assignment_id <> b.assignment_id
         AND b.started_at >= a.started_at AND b.started_at < coalesce(a.ended_at, 'infinity')""") == 0
    # 2: never more than `capacity` active assignments per operator at any moment.
    over = await conn.fetchval("""
        SELECT coalesce(max(n), 0) FROM (
          SELECT a.assignment_id, count(*) AS n FROM assigner.assignments a
          JOIN assigner.assignments b ON a.operator_id = b.operator_id
           AND b.started_at <= a.started_at AND coalesce(b.ended_at, 'infinity') > a.started_at
          GROUP BY a.assignment_id) x""")
    assert over <= capacity
    # 5: each chat's messages are numbered 1..n in apply order and counted once.
    assert await conn.fetchval("""
        SELECT count(*) FROM assigner.chats c
        LEFT JOIN (SELECT chat_id, count(*) AS n, max(seq) AS top, min(seq) AS low
                   FROM assigner.messages GROUP BY chat_id) m USING (chat_id)
        WHERE c.message_count <> coalesce(m.n, 0) OR coalesce(m.top, 0) <> coalesce(m.n, 0)
           OR coalesce(m.low, 1) <> 1""") == 0
    # Every ended assignment has its outcome; a waiting chat has its queue position.
    assert await conn.fetchval("""SELECT count(*) FROM assigner.chats WHERE state = 'waiting_assignment'
                                  AND (waiting_since IS NULL OR queued_at IS NULL)""") == 0


async def check_lifecycle(settings, conn: asyncpg.Connection) -> dict:
    """The outbox reached chat.lifecycle whole and, per chat, in the order the facts were written."""
    facts = [LIFECYCLE.validate_json(r.value) for r in await topic_records(settings, TOPIC_LIFECYCLE)]
    seen: set = set()
    recorded: dict[str, list[str]] = collections.defaultdict(list)
    assigned, ended = {}, {}
    for f in facts:
        if f.event_id in seen:  # republished after a relay crash: same id, consumers skip it
            continue
        seen.add(f.event_id)
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
    return {"facts": len(facts), "distinct": len(seen), "assignments": len(rows),
            "outcomes": collections.Counter(ended.values())}


async def test_every_message_survives_kills_and_restarts_of_services_kafka_and_postgres(own_world, tmp_path):
    pg, kafka, settings, database = own_world
    log: list = []
    t0 = time.monotonic()
    async with Fleet(settings, tmp_path, SERVICES) as fleet:
        run = Run(settings, fleet)
        operators = [f"op-{i}" for i in range(ACTIVE_OPERATORS)]
        sleepy = [f"zz-{i}" for i in range(SLEEPY_OPERATORS)]
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(limits=limits) as client:
            ops = [asyncio.create_task(operator(run, client, op, False)) for op in operators]
            ops += [asyncio.create_task(operator(run, client, op, True)) for op in sleepy]
            ops.append(asyncio.create_task(admin(run, client, operators)))
            try:
                await asyncio.wait_for(asyncio.gather(
                    produce_kafka_users(run), produce_ingest_users(run, client),
                    inject_faults(run, pg, kafka, database, log)), TRAFFIC_S + 200)
            except asyncio.TimeoutError:
                raise AssertionError(f"traffic did not finish: progress {dict(run.progress)}, faults {log}, "
                                     f"http {dict(run.status)}") from None
            finally:
                run.stop.set()
                done = await asyncio.wait_for(asyncio.gather(*ops, return_exceptions=True), 60)
            failures = [d for d in done if isinstance(d, BaseException)]
            assert not failures, failures
        traffic_s = time.monotonic() - t0

        conn = await asyncpg.connect(settings.database_url)
        try:
            async def all_stored():
                rows = await conn.fetch("SELECT chat_id, message_id FROM assigner.messages")
                return run.expected <= {(r["chat_id"], r["message_id"]) for r in rows}

            await harness.eventually(all_stored, timeout=120, interval=0.5)
            stored = {(r["chat_id"], r["message_id"]) for r in
                      await conn.fetch("SELECT chat_id, message_id FROM assigner.messages")}
            assert await conn.fetchval("SELECT count(*) FROM assigner.messages") == len(stored)
            # Every accepted message is stored; nothing is stored that nobody sent. A reply whose
            # answer was lost (ingest killed, Kafka down past the deadline) may or may not be.
            assert run.expected <= stored, sorted(run.expected - stored)[:20]
            assert stored <= run.expected | run.attempted, sorted(stored - run.expected - run.attempted)[:20]

            async def unsettled():
                # Operators stopped: every assignment left ends by idle timeout, so the run settles
                # once none is active, no timer is armed and the outbox is empty.
                return {
                    "outbox": await conn.fetchval("SELECT count(*) FROM assigner.outbox"),
                    "active": await conn.fetchval(
                        "SELECT count(*) FROM assigner.assignments WHERE ended_at IS NULL"),
                    "armed": await conn.fetchval("SELECT count(*) FROM idle_monitor.deadlines"),
                }

            async def settled():
                return not any((await unsettled()).values())

            try:
                await harness.eventually(settled, timeout=60, interval=0.5)
            except AssertionError:
                warnings = [ln[:400] for name in SERVICES for ln in fleet[name].log_tail(20000).splitlines()
                            if '"level": "warning"' in ln or '"level": "error"' in ln][-12:]
                raise AssertionError(f"never quiescent: {await unsettled()}; last warnings:\n"
                                     + "\n".join(warnings)) from None
            await check_invariants(conn, CAPACITY)
            lifecycle = await check_lifecycle(settings, conn)
        finally:
            await conn.close()

        inbound_events = await end_offsets_total(settings, TOPIC_INBOUND)
        assert inbound_events >= 20_000, inbound_events
        assert await end_offsets_total(settings, TOPIC_DLQ) == 0

        reconcile = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "switchboard", "reconcile", env=service_env(settings), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(reconcile.communicate(), 120)
        assert reconcile.returncode == 0, out.decode()[-3000:]

        assert [fleet[n].kills for n in SERVICES] == [1, 3, 1, 1]
        assert run.pulls > 200 and run.replies > 200, (run.pulls, run.replies)
        assert lifecycle["outcomes"]["timed_out"] > 0 and lifecycle["outcomes"]["answered"] > 0, lifecycle
        assert not run.server_errors, run.server_errors[:20]
    print(f"\nsurvival: {inbound_events} inbound events, {len(run.expected)} messages, {run.pulls} pulls, "
          f"{run.replies} replies, {lifecycle}, traffic {traffic_s:.0f}s, total {time.monotonic() - t0:.0f}s")
    print("faults:", log)
    print("http:", dict(run.status))
