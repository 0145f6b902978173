"""The services' Prometheus metrics as the bench reads them: counters summed, histogram quantiles."""

from __future__ import annotations

import math
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse_metrics(text: str, names: tuple[str, ...] = ()) -> list[Sample]:
    """Every sample of a text exposition (name, labels, value), or only the samples of these names.

    The parser is pure Python and several times slower than the services write the text: the
    monitor, which reads one counter twice a second in the bench's own process, hands it only that
    counter's sample lines.
    """
    if names:
        starts = tuple(f"{name}{after}" for name in names for after in ("{", " "))
        text = "\n".join(line for line in text.splitlines() if line.startswith(starts))
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_sum(samples: list[Sample], name: str, **labels) -> float:
    """The sum of a metric's samples that carry these labels (summed over the other labels)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == w for k, w in labels.items()))


def histogram(samples: list[Sample], name: str, **labels) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a histogram, summed over other labels."""
    buckets: dict[float, float] = defaultdict(float)
    for s in samples:
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == w for k, w in labels.items()):
            buckets[float(s.labels["le"])] += s.value
    return dict(buckets)


def histogram_quantile(q: float, after: dict[float, float], before: dict[float, float] | None = None) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of the difference of two bucket snapshots."""
    before = before or {}
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


def quantiles_ms(
    after: dict[float, float], before: dict[float, float] | None, digits: int, prefix: str = ""
) -> dict[str, float | None]:
    """p50 and p99 of a histogram's growth between two snapshots, in milliseconds."""
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        v = histogram_quantile(q, after, before)
        out[f"{prefix}{name}"] = None if v is None else round(v * 1000, digits)
    return out


def apply_summary(before: list[Sample] | None, after: list[Sample] | None, group: str) -> dict:
    """The assigner's own view of a phase: apply latency and one partition batch's apply time."""
    if not after:
        return {}
    hb = histogram(before or [], "switchboard_event_apply_latency_seconds", group=group)
    ha = histogram(after, "switchboard_event_apply_latency_seconds", group=group)
    bb = histogram(before or [], "switchboard_consumer_batch_duration_seconds", group=group)
    ba = histogram(after, "switchboard_consumer_batch_duration_seconds", group=group)
    out = {}
    apply, batch = quantiles_ms(ha, hb, 1), quantiles_ms(ba, bb, 1, "batch_")
    for name in ("p50", "p99"):
        out[name] = apply[name]
        out[f"batch_{name}"] = batch[f"batch_{name}"]
    out["batches"] = int(ba.get(float("inf"), 0) - bb.get(float("inf"), 0))
    return out
