"""The assigner's own Prometheus metrics (see docs/metrics.md)."""

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

CHATS = Gauge("switchboard_chats", "Chats per state.", ["state"])
OLDEST_WAITING = Gauge(
    "switchboard_queue_oldest_waiting_seconds", "Age of the longest-waiting chat per queue (0 if none).", ["queue"]
)
QUEUE_WAITING = Gauge("switchboard_queue_waiting_chats", "Chats waiting for an operator, per queue.", ["queue"])
OPERATORS = Gauge(
    "switchboard_operators", "Operators per presence status (profile-less holders as available).", ["status"]
)
ROUTING_FALLBACKS = Counter(
    "switchboard_routing_fallbacks_total", "User messages routed to a queue that does not exist (sent to default)."
)
ASSIGNMENTS_ACTIVE = Gauge("switchboard_assignments_active", "Active assignments.")
ASSIGNMENTS_STARTED = Counter("switchboard_assignments_started_total", "Assignments started.", ["via"])
ASSIGNMENTS_ENDED = Counter("switchboard_assignments_ended_total", "Assignments ended, by outcome.", ["outcome"])
PULL_LATENCY = Histogram(
    "switchboard_pull_latency_seconds",
    "Latency of POST /v1/assignments/next inside the service.",
    ["result"],
    buckets=LATENCY_BUCKETS,
)
OUTBOX_BACKLOG = Gauge("switchboard_outbox_backlog", "Lifecycle facts written but not yet published.")
OUTBOX_PUBLISHED = Counter("switchboard_outbox_published_total", "Lifecycle facts published to chat.lifecycle.")
OPERATOR_BATCH_COMMANDS = Histogram(
    "switchboard_operator_batch_commands",
    "Operator pulls, releases and completions applied per transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
