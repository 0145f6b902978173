"""The report: each phase's figures, the timeline, the headline, the targets, and the printed tables."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from switchboard.bench.conversation_report import print_conversation
from switchboard.bench.quantiles import pct_ms, rnd, summary_ms

if TYPE_CHECKING:  # the package's entry point imports this module without the bench extra (psutil)
    from switchboard.bench.load import Recorder
    from switchboard.bench.resources import Watched

console = Console(stderr=True)
REPORT_VERSION = 1


def cpu_delta(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Average cores used per process over a window."""
    return {k: round((after[k] - before[k]) / seconds, 3) for k in after if k in before and seconds > 0}


def phase_report(
    window: tuple[float, float],
    rec: Recorder,
    users: dict[str, float],
    per_s: dict,
    cpu0: dict,
    cpu1: dict,
    hist: dict,
    extra: dict,
) -> dict:
    """One phase's figures over its measured window: rates, latencies, CPU."""
    a, b = window
    secs = list(range(math.ceil(a), math.floor(b)))
    span = max(1, len(secs))
    user_applied = sum(per_s["user"].get(s, 0) for s in secs) / span
    op_applied = sum(per_s["operator"].get(s, 0) for s in secs) / span
    turns = sum(per_s["answered"].get(s, 0) for s in secs) / span
    acked = sum(rec.user_acks_by_s.get(s, 0) for s in secs) / span
    lat, by_path = [], {"http": [], "kafka": []}
    for mid, t_sent in rec.sent_at.items():
        if a <= t_sent < b and mid in users:
            d = max(0.0, users[mid] - t_sent)
            lat.append(d)
            by_path[rec.path_of[mid]].append(d)
    pulls = [p for p in rec.pulls if a <= p[0] < b]
    by_result = defaultdict(list)
    for p in pulls:
        by_result[p[2]].append(p[1])
    return {
        "window_s": round(b - a, 1),
        "user_events_per_s": round(user_applied, 1),
        "user_events_acked_per_s": round(acked, 1),
        "operator_events_per_s": round(op_applied, 1),
        "inbound_events_per_s": round(user_applied + op_applied, 1),
        "turns_per_s": round(turns, 1),
        "apply_latency_ms": {**summary_ms(lat), "by_path": {k: summary_ms(v) for k, v in by_path.items() if v}},
        "assigner_histogram_apply_ms": hist,
        "pull_latency_ms": {
            **summary_ms([p[1] for p in pulls]),
            "by_result": {k: summary_ms(v) for k, v in sorted(by_result.items())},
        },
        "pulls_per_s": round(len(pulls) / max(0.001, b - a), 1),
        "release_latency_ms": summary_ms([r[1] for r in rec.releases if a <= r[0] < b]),
        "reply_accept_latency_ms": summary_ms([r[1] for r in rec.replies if a <= r[0] < b]),
        "user_accept_latency_ms": {
            k: summary_ms([x[1] for x in v if a <= x[0] < b]) for k, v in rec.accepts.items() if v
        },
        "cpu_cores": cpu_delta(cpu0, cpu1, b - a),
        **extra,
    }


def timeline(
    rec: Recorder,
    users: dict[str, float],
    per_s: dict,
    t_start: float,
    t_end: float,
    phases: list[tuple[str, float, float]],
) -> list[dict]:
    """Per wall-clock second from the load's start: acknowledged and applied rates, latency quantiles."""
    apply_by_s: dict[int, list[float]] = defaultdict(list)
    for mid, t_sent in rec.sent_at.items():
        if mid in users:
            apply_by_s[int(t_sent)].append(max(0.0, users[mid] - t_sent))
    pulls_by_s: dict[int, list[float]] = defaultdict(list)
    for t, d, _ in rec.pulls:
        pulls_by_s[int(t)].append(d)
    out = []
    for s in range(int(t_start), int(t_end) + 1):
        phase = next((n for n, a, b in phases if a <= s + 0.5 < b), "")
        ap, pl = apply_by_s.get(s, []), pulls_by_s.get(s, [])
        out.append(
            {
                "t": round(s - t_start, 1),
                "epoch": s,
                "phase": phase,
                "user_acked": rec.user_acks_by_s.get(s, 0),
                "user_applied": per_s["user"].get(s, 0),
                "turns": per_s["answered"].get(s, 0),
                "apply_p50_ms": pct_ms(ap, 0.5),
                "apply_p99_ms": pct_ms(ap, 0.99),
                "pull_p50_ms": pct_ms(pl, 0.5),
                "pull_p99_ms": pct_ms(pl, 0.99),
            }
        )
    return out


def headline(report: dict, load_pulls) -> None:
    """The figures of the first table, from the phases and the scale check (pull latency: both load phases)."""
    ph = report["phases"]
    mx, half = ph.get("max") or {}, ph.get("half") or {}  # no `max` with only_conversation
    conv = report.get("conversation") or {}
    pg = (report.get("pgbench") or {}).get("tps")
    sizes = (report.get("scale_check") or {}).get("sizes") or []
    pulls = [p[1] for p in load_pulls]
    events = mx.get("user_events_per_s")
    report["headline"] = {
        "user_events_per_s": events,
        "turns_per_s": mx.get("turns_per_s"),
        "pgbench_tps": pg,
        "events_per_pgbench_tps": round(events / pg, 2) if pg and events is not None else None,
        "conversation_turns_per_s": conv.get("turns_per_s"),
        "sql_peer_turns_per_s": (report.get("sql_peer") or {}).get("turns_per_s"),
        "conversation_ratio_to_sql_peer": (conv.get("comparison") or {}).get("ratio_to_sql_peer"),
        "conversation_cpu_ms_per_turn": (conv.get("cpu_ms_per_turn") or {}).get("stack_total"),
        "apply_p50_ms_half": (half.get("apply_latency_ms") or {}).get("p50"),
        "apply_p99_ms_half": (half.get("apply_latency_ms") or {}).get("p99"),
        "push_p50_ms_half": (half.get("push_latency_ms") or {}).get("p50"),
        "push_p95_ms_half": (half.get("push_latency_ms") or {}).get("p95"),
        "push_p99_ms_half": (half.get("push_latency_ms") or {}).get("p99"),
        "push_count_half": (half.get("push_latency_ms") or {}).get("count"),
        "apply_p50_ms_max": (mx.get("apply_latency_ms") or {}).get("p50"),
        "apply_p99_ms_max": (mx.get("apply_latency_ms") or {}).get("p99"),
        "pull_p50_ms": pct_ms(pulls, 0.5),
        "pull_p99_ms": pct_ms(pulls, 0.99),
        "pull_p99_ms_200_operators": sizes[0]["pull_latency_ms"]["p99"] if sizes else None,
        "stats_lag_p50_ms": ((half or mx).get("stats_lag_ms") or {}).get("p50"),
        "stats_lag_p99_ms": ((half or mx).get("stats_lag_ms") or {}).get("p99"),
    }


def resources(report: dict, watched: Watched) -> dict:
    """CPU per phase, CPU seconds in all and peak RSS of every watched process."""
    cpu_total = watched.cpu()
    rss = watched.peak_rss_mb()
    max_cores = (report["phases"].get("max") or {}).get("cpu_cores", {})
    conv_cores = (report.get("conversation") or {}).get("cpu_cores", {})
    return {
        "processes": {
            name: {
                "cpu_cores_max": max_cores.get(name),
                "cpu_cores_half": (report["phases"].get("half") or {}).get("cpu_cores", {}).get(name),
                "cpu_cores_conversation": conv_cores.get(name),
                "cpu_seconds_total": rnd(cpu_total.get(name), 1),
                "peak_rss_mb": rss.get(name),
            }
            for name in list(watched.pids) + ["postgres (all sessions)"]
        },
        "machine_busy_cores_max": max_cores.get("machine (all processes)"),
        "machine_busy_cores_conversation": conv_cores.get("machine (all processes)"),
        "note": "cpu_cores = average cores used in the phase window; peak RSS = VmHWM; postgres and the "
        "Kafka broker are shared with anything else running on this machine",
    }


def integrity_ok(integ: dict) -> bool:
    """Nothing lost, no inconsistent chat, and reconcile found no difference (after the load and at the end)."""
    return (
        integ["user_messages_lost"] == 0
        and integ["operator_messages_lost"] == 0
        and integ["chats_with_message_count_mismatch"] == 0
        and integ["chats_with_two_active_assignments"] == 0
        and integ["reconcile"]["differences"] == 0
        and integ["reconcile_final"]["differences"] == 0
    )


def targets(report: dict) -> list[dict]:
    """The six targets of docs/performance.md, each met or not (printed, never asserted)."""
    h = report["headline"]
    out = []

    def add(name, value, target, met, unit=""):
        out.append({"name": name, "value": value, "target": target, "met": met, "unit": unit})

    ratio = h.get("events_per_pgbench_tps")
    add(
        "user-message events/s >= pgbench TPS (aim 2x)",
        ratio,
        ">= 1.0 (2.0)",
        None if ratio is None else ratio >= 1.0,
        "x",
    )
    p99 = h.get("pull_p99_ms_200_operators")
    add(
        f"pull p99 with {report['options']['scale_operators']} operators",
        p99,
        "<= 10 ms",
        None if p99 is None else p99 <= 10,
        "ms",
    )
    sc = report.get("scale_check") or {}
    r = sc.get("p99_ratio_largest_to_smallest")
    routed = " (routed: 20 queues, 8 skill sets)" if sc.get("routed") else ""
    add(f"pull p99 at largest / smallest queue{routed}", r, "<= 1.5", None if r is None else r <= 1.5, "x")
    if sc.get("routed"):
        plans = [s["claim_plan"].get("index_scans_only") for s in sc.get("sizes", [])]
        only = all(plans) if plans else None
        add("routed claim: EXPLAIN ANALYZE shows index scans only (every size)", only, "true", only)
    a = h.get("apply_p99_ms_half")
    # With --half-rate the half phase ran at that rate, not at half of max: the names say so.
    set_rate = report["options"].get("half_rate") or 0
    half = f"at --half-rate {set_rate:g}/s" if set_rate > 0 else "at half max throughput"
    add(f"apply p99 {half}", a, "<= 200 ms", None if a is None else a <= 200, "ms")
    p = h.get("push_p99_ms_half")
    add(
        f"push p99 (reply accepted -> on the chat stream) {half if set_rate > 0 else 'at half load'}",
        p,
        "<= 250 ms",
        None if p is None else p <= 250,
        "ms",
    )
    ok = report["integrity"].get("ok")
    add("nothing lost or doubled; reconcile zero differences", ok, "true", ok)
    return out


def print_report(report: dict) -> None:
    """The figures and the targets as two tables on stderr, then the notes."""
    h = report["headline"]
    t = Table(title="Switchboard bench", show_lines=False)
    t.add_column("figure")
    t.add_column("value", justify="right")

    def v(x, unit="", digits=1):
        return "-" if x is None else f"{x:,.{digits}f}{unit}"

    def ms(x):
        return v(x, " ms")

    if report["phases"]:  # none with only_conversation: its own table below
        t.add_row("sustained user-message events/s (applied)", v(h["user_events_per_s"]))
        t.add_row("conversation turns/s (phase max)", v(h["turns_per_s"]))
        t.add_row("pgbench simple-update TPS (same run)", v(h["pgbench_tps"]))
        t.add_row("events/s ÷ pgbench TPS", v(h["events_per_pgbench_tps"], "x", 2))
        t.add_row("apply latency p50 / p99 (half load)", f"{ms(h['apply_p50_ms_half'])} / {ms(h['apply_p99_ms_half'])}")
        push = (report["phases"].get("half") or {}).get("push_latency_ms") or {}
        service = push.get("service_histogram_ms") or {}
        t.add_row(
            f"push latency p50 / p95 / p99 (half load, {h['push_count_half'] or 0} replies)",
            f"{ms(h['push_p50_ms_half'])} / {ms(h['push_p95_ms_half'])} / {ms(h['push_p99_ms_half'])}",
        )
        consumer = push.get("service_consumer_apply_ms") or {}
        t.add_row(
            "push, delivery's histograms p50 / p99: fact -> committed, fact -> written",
            f"{ms(consumer.get('p50'))} / {ms(consumer.get('p99'))}, {ms(service.get('p50'))} / {ms(service.get('p99'))}",
        )
        t.add_row("apply latency p50 / p99 (max load)", f"{ms(h['apply_p50_ms_max'])} / {ms(h['apply_p99_ms_max'])}")
        t.add_row("pull latency p50 / p99 (load phases)", f"{ms(h['pull_p50_ms'])} / {ms(h['pull_p99_ms'])}")
        t.add_row("stats lag p99 (half load)", v(h["stats_lag_p99_ms"], " ms"))
        for s in (report.get("scale_check") or {}).get("sizes", []):
            lat = s["pull_latency_ms"]
            t.add_row(
                f"scale: pull p50 / p99 with {s['waiting_chats']:,} waiting",
                f"{v(lat['p50'], ' ms')} / {v(lat['p99'], ' ms')}  ({s['pulls_per_s']:,.0f} pulls/s; "
                f"claim plan {s['claim_plan'].get('execution_ms')} ms"
                f"{', index scans only' if s['claim_plan'].get('index_scans_only') else ''})",
            )
        sc = report.get("scale_check") or {}
        if sc:
            t.add_row("scale: p99 ratio largest/smallest", v(sc.get("p99_ratio_largest_to_smallest"), "x", 2))
        for name, r in report["resources"]["processes"].items():
            t.add_row(
                f"cpu cores (max phase) / peak RSS: {name}",
                f"{v(r.get('cpu_cores_max'), '', 2)} / {v(r.get('peak_rss_mb'), ' MB')}",
            )
    integ = report["integrity"]
    t.add_row(
        "lost / unexpected user messages",
        f"{integ.get('user_messages_lost')} / {integ.get('user_messages_unexpected')}",
    )
    after_load, at_end = integ.get("reconcile") or {}, integ.get("reconcile_final") or {}
    t.add_row(
        "reconcile differences (after load / at end)", f"{after_load.get('differences')} / {at_end.get('differences')}"
    )
    console.print(t)
    print_conversation(report)
    tt = Table(title="Targets (figures, not assertions)")
    for col in ("target", "value", "wanted", "met"):
        tt.add_column(col)
    for g in report["targets"]:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[g["met"]]
        tt.add_row(g["name"], "-" if g["value"] is None else f"{g['value']}{g['unit']}", g["target"], met)
    console.print(tt)
    for note in report["notes"]:
        console.print(f"[dim]note: {note}[/dim]")
