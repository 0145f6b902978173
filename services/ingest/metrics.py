"""Ingest's own Prometheus metrics (see docs/metrics.md)."""

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

MESSAGES = Counter(
    "switchboard_ingest_messages_total",
    "Messages posted to ingest, by result (accepted, duplicate, rejected) and reason (why rejected; empty otherwise).",
    ["result", "reason"],
)
PUBLISH_LATENCY = Histogram(
    "switchboard_ingest_publish_latency_seconds",
    "Time for Kafka to acknowledge (acks=all) the records of one request.",
    buckets=LATENCY_BUCKETS,
)


def rejected(reason: str, count: int = 1) -> None:
    """Count messages refused (validation, size) or not accepted (Kafka or Postgres unavailable)."""
    MESSAGES.labels("rejected", reason).inc(count)
