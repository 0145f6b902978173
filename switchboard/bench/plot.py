"""The PNG plot of a report: throughput and latency over time, and the scale check.

matplotlib comes with the `bench` extra (`pip install -e '.[bench]'`, which `make bench` runs); without
it the bench still runs and says in its notes that no plot was written.
"""

from __future__ import annotations

from pathlib import Path

NO_MATPLOTLIB = (
    "matplotlib is not installed: no plot written (install the bench extra: "
    "pip install -e '.[bench]', or run `make bench`)"
)


def write_plot(report: dict, path: Path) -> str | None:
    """Draw the report's timeline (and scale check) to `path`; its path, or None when nothing was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append(NO_MATPLOTLIB)
        return None
    tl = report["timeline"]
    if not tl:
        return None
    scale = report.get("scale_check") or {}
    rows = 3 if scale.get("sizes") else 2
    fig, axes = plt.subplots(rows, 1, figsize=(12, 3.6 * rows), constrained_layout=True)
    t = [p["t"] for p in tl]
    ax = axes[0]
    ax.plot(t, [p["user_acked"] for p in tl], label="user messages acknowledged /s", lw=1, alpha=0.7)
    ax.plot(t, [p["user_applied"] for p in tl], label="user messages applied by the assigner /s", lw=1.6)
    ax.plot(t, [p["turns"] for p in tl], label="conversation turns (answers applied) /s", lw=1.2)
    pg = (report.get("pgbench") or {}).get("tps")
    if pg:
        ax.axhline(pg, color="grey", ls="--", lw=1, label=f"pgbench simple-update TPS ({pg:,.0f})")
    ax.set_ylabel("events / s")
    ax.set_title("Switchboard bench: throughput")
    ax2 = axes[1]
    for key, label in (
        ("apply_p50_ms", "apply p50"),
        ("apply_p99_ms", "apply p99"),
        ("pull_p50_ms", "pull p50"),
        ("pull_p99_ms", "pull p99"),
    ):
        xs = [p["t"] for p in tl if p[key] is not None]
        ys = [max(p[key], 0.01) for p in tl if p[key] is not None]
        ax2.plot(xs, ys, label=label + " (ms)", lw=1.2, ls="-" if "apply" in key else ":")
    ax2.set_yscale("log")
    ax2.set_ylabel("milliseconds")
    ax2.set_xlabel("seconds since the load started")
    ax2.set_title("latency per second (by send/request time)")
    colors = {"warm-up": "#eeeeee", "conversation": "#f0e6ff", "max": "#ddeeff", "half": "#e6ffe6", "drain": "#fff3dd"}
    for name, a, b in report["phase_spans"]:
        for axis in (ax, ax2):
            axis.axvspan(a, b, color=colors.get(name, "#f5f5f5"), zorder=0)
        if b - a >= 4:
            ax.text((a + b) / 2, ax.get_ylim()[1] * 0.98, name, ha="center", va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    if rows == 3:
        ax3 = axes[2]
        sizes = [s["waiting_chats"] for s in scale["sizes"]]
        ax3.plot(sizes, [s["pull_latency_ms"]["p50"] for s in scale["sizes"]], "o-", label="pull p50 (client)")
        ax3.plot(sizes, [s["pull_latency_ms"]["p99"] for s in scale["sizes"]], "o-", label="pull p99 (client)")
        ax3.set_xscale("log")
        ax3.set_xlabel("waiting chats")
        ax3.set_ylabel("milliseconds")
        ax3.set_title(f"scale check: {scale['operators']} operators pulling and releasing")
        ax3.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
