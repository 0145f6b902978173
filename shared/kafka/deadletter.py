"""The dead-letter topic: each poison record reaches `chat.dlq` once per consumer group.

A batch is retried after a transient failure, and re-read after a restart or a rebalance when its
offsets were not committed yet; its poison records must not be dead-lettered again each time.
Two records keep them out:
- in memory, the offsets this consumer sent that no committed offset covers yet: a retried batch,
  whose transaction rolled back, finds them here;
- in Postgres, a marker id per dead-lettered record, claimed through shared.tracking in the
  transaction of the record's batch: whoever re-reads a batch that committed finds it there, as it
  finds the batch's applied event ids.
What is left: a crash or a rebalance between the send and the commit of that transaction sends the
record once more; its `dlq.source_*` and `dlq.consumer_group` headers identify the duplicate.

Records go through the FastStream publisher of `chat.dlq` declared on the process's broker
(`shared.kafka.publishers.declare`). A dead letter carries the CloudEvents headers too, though its
value is not one of our envelopes (it may not even be JSON): `ce_id` is the marker (stable, so a
duplicate has the same id, and unique per source record), `ce_type` is `switchboard.dead_letter`,
`ce_source` is `/switchboard/<consumer group>` (who dead-lettered it: the same record may be
dead-lettered by every group, each its own source), `ce_time` is when it was dead-lettered, and
`content-type` is `application/octet-stream` (the value is passed on unchanged, whatever it is).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition  # the partition type of the records the consumer hands us
from faststream.kafka.publisher.usecase import DefaultPublisher

from shared import metrics
from shared.events import cloudevent_headers, utcnow

log = logging.getLogger("switchboard.kafka")

MARKER_NAMESPACE = uuid.UUID("5f0b7f4e-9a3c-4d61-8f0e-2c6d1e7a9b35")
DEAD_LETTER_TYPE = "dead_letter"  # the `type` of a dead letter: ce_type `switchboard.dead_letter`
REASON_MAX_BYTES = 4000


class ConsumedRecord(Protocol):
    """What a dead letter needs of a consumed record (aiokafka's ConsumerRecord has these)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Poisoned:
    """A record that can never be applied, where it came from, and why."""

    tp: TopicPartition
    record: ConsumedRecord
    reason: str

    @property
    def marker(self) -> uuid.UUID:
        """The id claimed for it once dead-lettered (its timestamp tells a recreated topic's offsets apart)."""
        rec = self.record
        return uuid.uuid5(MARKER_NAMESPACE, f"{self.tp.topic}/{self.tp.partition}@{rec.offset}/{rec.timestamp}")


class DeadLetters:
    """Sends a consumer group's poison records to the dead-letter topic, remembering what it sent."""

    def __init__(self, publisher: DefaultPublisher, dlq_topic: str, group_id: str, logical: dict[str, str]):
        # `publisher`: the chat.dlq publisher, `shared.kafka.publishers.declare(broker, settings, TOPIC_DLQ)`.
        # (`| Any` until BatchConsumer's own parameter, still typed as a producer, is retyped.)
        self.publisher: DefaultPublisher = publisher
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.logical = logical
        self._sent: dict[TopicPartition, set[int]] = {}

    async def send(self, poisoned: Poisoned) -> None:
        """Send the record with its reason and origin, unless this consumer sent it since the last offset commit."""
        tp, rec = poisoned.tp, poisoned.record
        if rec.offset in self._sent.get(tp, ()):
            return
        headers = {
            "dlq.reason": poisoned.reason.encode()[:REASON_MAX_BYTES].decode(errors="ignore"),
            "dlq.source_topic": tp.topic,
            "dlq.source_partition": str(tp.partition),
            "dlq.source_offset": str(rec.offset),
            "dlq.consumer_group": self.group_id,
            **cloudevent_headers(
                poisoned.marker, DEAD_LETTER_TYPE, self.group_id, utcnow(), "application/octet-stream"
            ),
        }
        # Waits for the ack (no `no_confirm`): the caller records the marker only once Kafka has it.
        await self.publisher.publish(rec.value, self.dlq_topic, key=rec.key, headers=headers)
        self._sent.setdefault(tp, set()).add(rec.offset)
        metrics.DLQ_RECORDS.labels(self.group_id, self.logical[tp.topic]).inc()
        log.warning(
            "record sent to dead-letter topic",
            extra={
                "group": self.group_id,
                "partition": f"{tp.topic}/{tp.partition}",
                "offset": rec.offset,
                "reason": poisoned.reason[:300],
            },
        )

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Offsets committed: records below them are never re-read by this consumer, forget them."""
        for tp, committed in offsets.items():
            sent = self._sent.get(tp)
            if sent:
                sent.difference_update([o for o in sent if o < committed])

    def forget(self, partitions) -> None:
        """Partitions that moved to another member."""
        for tp in partitions:
            self._sent.pop(tp, None)
