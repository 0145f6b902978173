"""The FastStream broker: one per process, built in the service's wiring from its settings.

Every Kafka subscriber (`shared.kafka.consumer.BatchConsumer`) and publisher of a process is
declared on this broker, so the AsyncAPI document is generated from what the process really
consumes and produces. It is never built at import time (no module-level broker bound to
localhost): `make_broker` is called with the process's settings.

The producer options are the system's delivery guarantee (`shared.kafka.producer.producer_options`):
`acks="all"` and idempotence (a retried send is never written twice), the key → partition cache
(`CachingPartitioner`), and the send timeout of SWITCHBOARD_KAFKA_SEND_TIMEOUT_S. The broker's
producer object is `shared.kafka.producer.ResilientProducer`, which replaces the aiokafka producer
when it cannot recover by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from faststream.kafka import KafkaBroker

from shared.kafka.producer import ResilientProducer, make_producer, producer_options
from shared.settings import Settings

if TYPE_CHECKING:  # FastStream has no type of its own for the aiokafka producer a factory builds
    from aiokafka import AIOKafkaProducer

# A batch in flight may take this long to finish when the process stops (then it is committed).
GRACEFUL_TIMEOUT_S = 30.0


def make_broker(
    settings: Settings,
    service: str,
    *,
    producer_factory: Callable[[Settings], AIOKafkaProducer] | None = None,
    **overrides,
) -> KafkaBroker:
    """The process's broker; nothing connects until it is started.

    `producer_factory` builds the producers that replace a stuck one (by default `make_producer`
    with this broker's producer options); tests pass one that builds fakes.
    """
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"switchboard-{service}",
        # Topics are created by `shared.kafka.admin.ensure_topics` with their partitions and
        # replication; a subscriber must never create one with the broker's defaults.
        allow_auto_create_topics=False,
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        logger=logging.getLogger("switchboard.faststream"),
        log_level=logging.DEBUG,  # per-message logs at debug: our own logs say what matters
        description=f"Switchboard {service}: Kafka side",
        **producer_options(settings),
    )
    options.update(overrides)
    broker = KafkaBroker(**options)
    # Every publisher sends through the broker's producer object: ours replaces the aiokafka producer
    # when it cannot recover (see shared.kafka.producer). FastStream's TestKafkaBroker swaps the same slot.
    same = {k: options[k] for k in ("bootstrap_servers", "client_id", *producer_options(settings))}
    broker.config.broker_config.producer = ResilientProducer(
        settings, producer_factory or (lambda s: make_producer(s, **same))
    )
    return broker


def broker_producer(broker: KafkaBroker) -> ResilientProducer:
    """The producer `make_broker` installed (connected by `broker.connect()` or `broker.start()`)."""
    producer = broker.config.broker_config.producer
    if not isinstance(producer, ResilientProducer):  # e.g. inside TestKafkaBroker, which swaps it
        raise TypeError(f"the broker's producer is {type(producer).__name__}, not the one make_broker installs")
    return producer
