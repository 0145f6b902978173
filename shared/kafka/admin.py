"""Kafka administration: create the docs/contract.md §2 topics, and tell whether the broker answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

# FastStream creates topics only when one of its subscribers starts; these are created before any
# process runs (`switchboard infra up`, every service's startup, ingest which subscribes to nothing),
# and the readiness probe asks the broker directly.
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.events import ALL_TOPICS
from shared.settings import Settings


async def ensure_topics(settings: Settings, names: Sequence[str] = ALL_TOPICS) -> list[str]:
    """Create the docs/contract.md §2 topics (with the configured prefix) that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(n) for n in names]
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=settings.topic_partitions,
                            replication_factor=settings.topic_replication_factor,
                        )
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        await admin.close()


async def kafka_ready(bootstrap_servers: str, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request (not merely accepts a connection)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass
