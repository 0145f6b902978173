"""Prometheus metrics shared by every service (names: `switchboard_<thing>_<unit>`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter(
    "switchboard_http_requests_total", "HTTP requests served.", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "switchboard_http_request_duration_seconds",
    "HTTP request latency.",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_EVENTS = Counter(
    "switchboard_consumer_events_total",
    "Kafka events seen by a consumer group, by result (applied, duplicate).",
    ["group", "topic", "result"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "switchboard_consumer_batch_duration_seconds",
    "Time to apply one partition batch.",
    ["group"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_RETRIES = Counter(
    "switchboard_consumer_retries_total", "Batches retried after a transient failure.", ["group"]
)
CONSUMER_LAG = Gauge(
    "switchboard_consumer_lag_records",
    "Records behind the partition's high watermark.",
    ["group", "topic", "partition"],
)
DLQ_RECORDS = Counter("switchboard_dlq_records_total", "Records sent to the dead-letter topic.", ["group", "topic"])
EVENT_APPLY_LATENCY = Histogram(
    "switchboard_event_apply_latency_seconds",
    "From an event's occurred_at to the commit of its effect.",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
RETRIES = Counter(
    "switchboard_retries_total",
    "Retries after a failure, by what was retried (every retry loop waits through shared.retry.Backoff).",
    ["what"],
)
CONSUMER_HEALTHY = Gauge(
    "switchboard_consumer_healthy",
    "1 while the consumer group's loop is alive and has not been failing longer than SWITCHBOARD_CONSUMER_STALL_S.",
    ["group"],
)
GC_PAUSE = Histogram(
    "switchboard_gc_pause_seconds",
    "Garbage collections of a service process, by generation (2 is a full collection); the event loop waits meanwhile.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
