"""Test harness: fresh databases and topics per test, in-process services, producing and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import migrations
from shared.auth import issue_token
from shared.events import ALL_TOPICS, encode, new_event_id, utcnow
from shared.kafka import ensure_topics
from shared.settings import Settings
from switchboard import services as registry

TEST_SECRET = "switchboard-test-secret-0123456789"


def with_db(url: str, name: str) -> str:
    """The same server as `url`, database `name`."""
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


async def create_template(base_url: str) -> str:
    """A database holding every service's migrated schema, to copy per test; returns its name."""
    name = f"sb_tpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_db(base_url, name))
    try:
        for service in registry.NAMES:
            if registry.has_migrations(service):
                await migrations.apply(conn, registry.schema(service), registry.migrations_dir(service))
    finally:
        await conn.close()
    return name


async def clone_database(base_url: str, template: str) -> str:
    """A fresh database copied from the template; returns its URL."""
    name = f"sb_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return with_db(base_url, name)


async def drop_database(base_url: str, name: str) -> None:
    """Drop a test database, disconnecting whoever still holds it."""
    admin = await asyncpg.connect(with_db(base_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic with this prefix (best effort)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception:
        pass
    finally:
        await admin.close()


def make_settings(database_url: str, prefix: str, **overrides) -> Settings:
    """Settings for one isolated test: its own database and topic prefix."""
    values: dict[str, Any] = dict(
        database_url=database_url,
        topic_prefix=prefix,
        topic_partitions=3,
        auth_secret=TEST_SECRET,
        idle_timeout_s=300,
        repeat_cooldown_s=60,
        db_pool_min=1,
        db_pool_max=10,
        consumer_poll_timeout_ms=50,
    )
    values.update(overrides)
    return Settings(**values)


def token(sub: str, role: str = "operator", secret: str = TEST_SECRET) -> dict[str, str]:
    """Authorization headers for `sub` with `role`."""
    return {"Authorization": f"Bearer {issue_token(secret, sub, role)}"}


REQUEST_BOUND_S = 60.0


class BoundedASGITransport(httpx.ASGITransport):
    """In-process requests have no network timeout; bound them, and show every task on a hang."""

    async def handle_async_request(self, request):
        try:
            return await asyncio.wait_for(super().handle_async_request(request), REQUEST_BOUND_S)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(limit=12)
            raise AssertionError(
                f"{request.method} {request.url} got no response within {REQUEST_BOUND_S}s "
                "(every task's stack is printed above)"
            ) from None


@contextlib.asynccontextmanager
async def running(service: str, settings: Settings):
    """Run a service in-process (its lifespan: consumers, loops) and yield an HTTP client to it."""
    app = registry.module(service).create_app(settings)
    async with app.router.lifespan_context(app):
        transport = BoundedASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{service}") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


class Producer:
    """Publishes test events to a test's topics, keyed by chat id, waiting for acks."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
        )

    async def __aenter__(self):
        await self._producer.start()
        return self

    async def __aexit__(self, *exc):
        await asyncio.wait_for(self._producer.stop(), 30)

    async def send(self, topic: str, event, key: bytes | None = None) -> None:
        """Send an event model (or raw bytes) to a logical topic (bounded: a hang fails the test)."""
        value = event if isinstance(event, (bytes, type(None))) else encode(event)
        if key is None and not isinstance(event, (bytes, type(None))):
            key = event.chat_id.encode()
        await asyncio.wait_for(self._producer.send_and_wait(self.settings.topic(topic), value=value, key=key), 60)

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None, headers=None) -> None:
        """Send raw bytes, for poison-record tests."""
        await self._producer.send_and_wait(self.settings.topic(topic), value=value, key=key, headers=headers)


def user_message(chat_id: str, text: str = "hi", message_id: str | None = None, at=None):
    """A `user_message` envelope as a frontend would produce it."""
    from shared.events import UserMessage, UserMessagePayload

    return UserMessage(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at or utcnow(),
        producer="test",
        payload=UserMessagePayload(message_id=message_id or f"m-{uuid.uuid4().hex[:10]}", text=text),
    )


def operator_message(chat_id: str, operator_id: str, text: str = "hello", message_id: str | None = None, at=None):
    """An `operator_message` envelope as a frontend would produce it."""
    from shared.events import OperatorMessage, OperatorMessagePayload

    return OperatorMessage(
        event_id=new_event_id(),
        chat_id=chat_id,
        occurred_at=at or utcnow(),
        producer="test",
        payload=OperatorMessagePayload(
            message_id=message_id or f"m-{uuid.uuid4().hex[:10]}", operator_id=operator_id, text=text
        ),
    )


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05):
    """Poll an async check until it returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def read_topic(settings: Settings, topic: str, *, min_records: int = 1, timeout: float = 20.0) -> list:
    """Read a logical topic from the beginning until at least `min_records` arrived."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < min_records and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def read_all(settings: Settings, topic: str, *, timeout: float = 20.0) -> list:
    """Every record of a logical topic, from the beginning up to its end offsets now, in partition order.

    For "exactly these" and "none" checks once every writer has stopped or flushed (a service's
    lifespan ended, a quiescent reconcile): what Kafka acknowledged is all there will be, so it reads
    that once instead of waiting out a timeout for records that must not come (read_topic).
    """
    name = settings.topic(topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([name])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(name, p["partition"]) for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]
    assert partitions, f"{name} has no partitions: {described}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[TopicPartition, list] = {tp: [] for tp in partitions}
        deadline = time.monotonic() + timeout
        while left := [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{name}: {left} not read to {ends} within {timeout}s"
            for tp, recs in (await consumer.getmany(*left, timeout_ms=200)).items():
                records[tp].extend(r for r in recs if r.offset < ends[tp])
        return [r for tp in partitions for r in records[tp]]
    finally:
        await consumer.stop()


def record_json(record) -> dict:
    """A Kafka record's value as JSON."""
    return json.loads(record.value)


@dataclass
class TestEnv:
    """One test's isolated world: a fresh database and its own topics."""

    __test__ = False
    settings: Settings
    database_url: str

    def with_settings(self, **overrides) -> Settings:
        """A copy of the settings with some values changed."""
        return self.settings.model_copy(update=overrides)

    async def connect(self) -> asyncpg.Connection:
        """A direct connection to the test database."""
        return await asyncpg.connect(self.database_url)


async def make_env(base_url: str, template: str, bootstrap: str, **overrides) -> TestEnv:
    """Build a TestEnv: clone the template database and create prefixed topics."""
    url = await clone_database(base_url, template)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = make_settings(url, prefix, kafka_bootstrap_servers=bootstrap, **overrides)
    await ensure_topics(settings, ALL_TOPICS)
    return TestEnv(settings=settings, database_url=url)
