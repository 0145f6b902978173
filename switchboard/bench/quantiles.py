"""Quantiles of observed durations, the way every figure of the report is summarised."""

from __future__ import annotations

import math


def pct(values, q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return s[k]


def pct_ms(values_s, q: float, digits: int = 2) -> float | None:
    """The q-quantile of durations in seconds, as rounded milliseconds (None for no values)."""
    v = pct(values_s, q)
    return None if v is None else round(v * 1000, digits)


def summary_ms(values_s) -> dict:
    """count, p50, p90, p99, max of durations in seconds, as milliseconds."""
    vals = list(values_s)
    out = {"count": len(vals)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        out[name] = pct_ms(vals, q, 3)
    return out


def rnd(x, digits=1):
    """`round` that passes None through."""
    return None if x is None else round(x, digits)
