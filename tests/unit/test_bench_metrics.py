"""The bench's reading of the services' /metrics text (prometheus_client's parser), without a service."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from switchboard.bench.metrics import apply_summary, histogram, histogram_quantile, metric_sum, parse_metrics

APPLIED = "switchboard_consumer_events_total"


def _exposition() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    events = Counter("switchboard_consumer_events", "events", ["group", "topic", "result"], registry=registry)
    latency = Histogram(
        "switchboard_event_apply_latency_seconds",
        "apply",
        ["group", "topic"],
        registry=registry,
        buckets=(0.01, 0.05, 0.1, 0.5, 1.0),
    )
    # A family whose name starts like the counter's: the monitor's filter must not take it.
    Counter("switchboard_consumer_events_totals_seen", "other", registry=registry).inc(1000)
    return registry, events, latency


def test_the_monitor_reads_the_applied_count_from_the_counters_lines_alone():
    registry, events, latency = _exposition()
    latency.labels("bench.assigner", "chat.inbound").observe(0.2)
    events.labels("bench.assigner", "chat.inbound", "applied").inc(120)
    events.labels("bench.assigner", "chat.inbound", "duplicate").inc(7)
    events.labels("bench.assigner", "chat.timeouts", "applied").inc(3)
    text = generate_latest(registry).decode()

    everything = parse_metrics(text)
    only_counter = parse_metrics(text, (APPLIED,))

    labels = dict(group="bench.assigner", topic="chat.inbound", result="applied")
    assert metric_sum(only_counter, APPLIED, **labels) == metric_sum(everything, APPLIED, **labels) == 120
    assert metric_sum(only_counter, APPLIED, group="bench.assigner") == 130
    assert {s.name for s in only_counter} == {APPLIED}
    assert any(s.name.startswith("switchboard_event_apply_latency_seconds") for s in everything)


def test_a_phase_quantile_counts_only_what_was_observed_between_the_two_snapshots():
    registry, _, latency = _exposition()
    for _ in range(100):
        latency.labels("bench.assigner", "chat.inbound").observe(0.7)  # before the phase: slow
    before = parse_metrics(generate_latest(registry).decode())
    for _ in range(100):
        latency.labels("bench.assigner", "chat.inbound").observe(0.02)  # in the phase: fast
    after = parse_metrics(generate_latest(registry).decode())

    name = "switchboard_event_apply_latency_seconds"
    p99 = histogram_quantile(0.99, histogram(after, name), histogram(before, name))

    assert 0.01 < p99 <= 0.05
    assert histogram_quantile(0.99, histogram(after, name)) > 0.5  # over all time the slow ones dominate
    summary = apply_summary(before, after, "bench.assigner")
    assert summary["p99"] == round(p99 * 1000, 1) and summary["batches"] == 0
