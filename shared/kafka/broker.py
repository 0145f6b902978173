"""The FastStream broker: one per process, built in the service's wiring from its settings.

Every Kafka subscriber (`shared.kafka.consumer.BatchConsumer`) and publisher of a process is
declared on this broker, so the AsyncAPI document is generated from what the process really
consumes and produces. It is never built at import time (no module-level broker bound to
localhost): `make_broker` is called with the process's settings.

The producer options are the system's delivery guarantee: `acks="all"` and idempotence (a
retried send is never written twice), the key → partition cache (`CachingPartitioner`), and
the send timeout of SWITCHBOARD_KAFKA_SEND_TIMEOUT_S.
"""

from __future__ import annotations

import logging

from faststream.kafka import KafkaBroker

from shared.settings import Settings

# A batch in flight may take this long to finish when the process stops (then it is committed).
GRACEFUL_TIMEOUT_S = 30.0


def producer_options(settings: Settings) -> dict:
    """The options of every producer of the system (the broker's, and a replacement's)."""
    from shared.kafka.producer import CachingPartitioner  # producer.py imports this module

    return dict(
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        partitioner=CachingPartitioner(),
        request_timeout_ms=int(settings.kafka_send_timeout_s * 1000),
        max_request_size=2 * 1024 * 1024,
    )


def make_broker(settings: Settings, service: str, **overrides) -> KafkaBroker:
    """The process's broker; nothing connects until it is started."""
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
    return KafkaBroker(**options)
