"""Kafka plumbing, one module per concern; the public names are re-exported here.

- `broker`: the process's FastStream broker, with `ResilientProducer` as its producer;
- `producer`: the idempotent producer and `ResilientProducer`, which replaces it when it is stuck;
- `publishers`: the FastStream publisher of each produced topic (`declare`), with its payload schema;
- `admin`: topic creation and broker readiness;
- `decoding`: a record validated against its topic's schema, or the reason it is poison;
- `consumer`: `BatchConsumer`, each poll applied in one transaction, offsets committed after it;
- `deadletter`: poison records to `chat.dlq`, once each.
"""

from shared.kafka.admin import ensure_topics, kafka_ready
from shared.kafka.consumer import LIFECYCLE_FETCH_MIN_BYTES, ApplyBatch, BatchConsumer
from shared.kafka.deadletter import DeadLetters, Poisoned
from shared.kafka.decoding import Incoming, Poison, decode_record
from shared.kafka.producer import CachingPartitioner, ResilientProducer, make_producer

__all__ = [
    "LIFECYCLE_FETCH_MIN_BYTES",
    "ApplyBatch",
    "BatchConsumer",
    "CachingPartitioner",
    "DeadLetters",
    "Incoming",
    "Poison",
    "Poisoned",
    "ResilientProducer",
    "decode_record",
    "ensure_topics",
    "kafka_ready",
    "make_producer",
]
