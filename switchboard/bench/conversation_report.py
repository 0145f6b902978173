"""The conversation phase's figures (pure: from what the clients observed, the assigner's records per
second and two CPU snapshots) and their printed table."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from switchboard.bench.quantiles import summary_ms

if TYPE_CHECKING:  # the report's printing needs no psutil
    from switchboard.bench.conversation import Observed

console = Console(stderr=True)
# What Watched.cpu() reports that is not a process of the stack under test.
NOT_STACK = ("bench client", "machine (all processes)", "machine steal (other VMs)")
HEAVY_CLIENT_SHARE = 0.25  # above this share of the stack's CPU per turn the load generator is called heavy


def cpu_ms_per_turn(cpu0: dict[str, float], cpu1: dict[str, float], seconds: float, turns_per_s: float) -> dict:
    """CPU milliseconds per turn of each watched process over a window, the stack's sum (every process
    but the bench client and the machine totals), the bench client's, and its share of the stack's."""
    turns = turns_per_s * seconds
    if turns <= 0:
        return {"processes": {}, "stack_total": None, "bench_client": None, "bench_client_share_of_stack": None}
    per = {k: (cpu1[k] - cpu0[k]) * 1000 / turns for k in cpu1 if k in cpu0}
    stack = sum(v for k, v in per.items() if k not in NOT_STACK)
    client = per.get("bench client")
    return {
        "processes": {k: round(v, 3) for k, v in per.items()},
        "stack_total": round(stack, 3),
        "bench_client": None if client is None else round(client, 3),
        "bench_client_share_of_stack": None if client is None or stack <= 0 else round(client / stack, 3),
    }


def summarize(
    window: tuple[float, float],
    seen: Observed,
    per_s: dict[str, dict[int, int]],
    cpu0: dict[str, float],
    cpu1: dict[str, float],
) -> dict:
    """The phase's figures over its measured window.

    Rates from the assigner's records per whole second inside the window (turns: assignments ended as
    answered); latencies from the clients' requests started inside it; CPU from the two snapshots.
    """
    a, b = window
    seconds = b - a
    secs = range(math.ceil(a), math.floor(b))
    span = max(1, len(secs))

    def rate(kind: str) -> float:
        return sum(per_s[kind].get(s, 0) for s in secs) / span

    turns, users, operators = rate("answered"), rate("user"), rate("operator")
    ingest = [x for x in seen.ingest if a <= x[0] < b]
    pulls = [p for p in seen.pulls if a <= p[0] < b]
    replies = [t for t in seen.turns if a <= t[0] < b]
    by_sender: dict[str, list[float]] = defaultdict(list)
    for _, d, sender in ingest:
        by_sender[sender].append(d)
    by_result: dict[str, list[float]] = defaultdict(list)
    for _, d, result in pulls:
        by_result[result].append(d)
    measured_turns = turns * seconds
    return {
        "window_s": round(seconds, 1),
        "turns_per_s": round(turns, 1),
        "replies_seen_per_s": round(len(replies) / seconds, 1) if seconds > 0 else None,
        "user_messages_per_s": round(users, 1),
        "operator_messages_per_s": round(operators, 1),
        "user_messages_per_turn": round(users / turns, 2) if turns else None,
        "ingest_latency_ms": {
            **summary_ms([x[1] for x in ingest]),
            "by_sender": {k: summary_ms(v) for k, v in sorted(by_sender.items())},
        },
        "pull_latency_ms": {
            **summary_ms([p[1] for p in pulls]),
            "by_result": {k: summary_ms(v) for k, v in sorted(by_result.items())},
        },
        "pulls_per_turn": {
            k: round(len(v) / measured_turns, 3) if measured_turns else None for k, v in sorted(by_result.items())
        },
        "turn_latency_ms": summary_ms([t[1] for t in replies]),
        "chats_opened": seen.chats_opened,
        "reply_timeouts": seen.reply_timeouts,
        "operator_wait_timeouts": seen.operator_wait_timeouts,
        "errors": dict(seen.errors),
        "cpu_cores": {k: round((cpu1[k] - cpu0[k]) / seconds, 3) for k in cpu1 if k in cpu0 and seconds > 0},
        "cpu_ms_per_turn": cpu_ms_per_turn(cpu0, cpu1, seconds, turns),
    }


def compare(turns_per_s: float | None, peer: dict | None, pgbench: dict | None) -> dict:
    """Our turns/s next to the SQL reference peer's and pgbench simple-update's TPS (same run)."""
    peer_turns = (peer or {}).get("turns_per_s")
    tps = (pgbench or {}).get("tps")
    return {
        "turns_per_s": turns_per_s,
        "sql_peer_turns_per_s": peer_turns,
        "pgbench_tps": tps,
        "ratio_to_sql_peer": round(turns_per_s / peer_turns, 3) if turns_per_s is not None and peer_turns else None,
        "sql_peer_turns_per_pgbench_tps": round(peer_turns / tps, 3) if peer_turns and tps else None,
    }


def client_note(conv: dict) -> str | None:
    """A note when the load generator used a large share of the CPU it measures (None otherwise)."""
    cost = conv.get("cpu_ms_per_turn") or {}
    share = cost.get("bench_client_share_of_stack")
    if share is None or share <= HEAVY_CLIENT_SHARE:
        return None
    return (
        f"the load generator (Python asyncio) used {cost['bench_client']} ms of CPU per turn, "
        f"{share:.0%} of the stack's {cost['stack_total']} ms: on a machine of few cores it takes CPU "
        "from what it measures, so the turns/s are pessimistic"
    )


def print_conversation(report: dict) -> None:
    """The conversation phase's table (nothing when the phase did not run)."""
    conv = report.get("conversation")
    if not conv:
        return

    def v(x, unit="", digits=1):
        return "-" if x is None else f"{x:,.{digits}f}{unit}"

    def p50_99(lat: dict) -> str:
        return f"{v(lat.get('p50'), ' ms')} / {v(lat.get('p99'), ' ms')}"

    vs = conv.get("comparison") or {}
    t = Table(title=f"Conversation phase ({conv['users']} users, {conv['operators']} operators, all HTTP)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("conversation turns/s (answers applied)", v(conv["turns_per_s"]))
    t.add_row("SQL reference peer turns/s (same run)", v(vs.get("sql_peer_turns_per_s")))
    t.add_row("turns/s ÷ SQL peer turns/s", v(vs.get("ratio_to_sql_peer"), "x", 2))
    t.add_row("pgbench simple-update TPS (same run)", v(vs.get("pgbench_tps")))
    t.add_row("replies seen by users /s", v(conv["replies_seen_per_s"]))
    t.add_row("user messages per turn", v(conv["user_messages_per_turn"], "", 2))
    by_sender = conv["ingest_latency_ms"]["by_sender"]
    t.add_row("ingest latency p50 / p99: user messages", p50_99(by_sender.get("user") or {}))
    t.add_row("ingest latency p50 / p99: operator replies", p50_99(by_sender.get("operator") or {}))
    t.add_row("pull latency p50 / p99 (all pulls)", p50_99(conv["pull_latency_ms"]))
    pulls = ", ".join(f"{k} {n}" for k, n in conv["pulls_per_turn"].items())
    t.add_row("pulls per turn", pulls or "-")
    t.add_row("turn latency p50 / p99 (last user message acked → reply read)", p50_99(conv["turn_latency_ms"]))
    cost = conv["cpu_ms_per_turn"]
    for name, ms in sorted(cost["processes"].items(), key=lambda kv: -kv[1]):
        if name not in NOT_STACK:
            t.add_row(f"CPU ms per turn: {name}", v(ms, "", 2))
    t.add_row("CPU ms per turn: the stack, summed", v(cost["stack_total"], "", 2))
    share = cost.get("bench_client_share_of_stack")
    t.add_row(
        "CPU ms per turn: the load generator (share of the stack's)",
        f"{v(cost['bench_client'], '', 2)} ({'-' if share is None else f'{share:.0%}'})",
    )
    t.add_row("CPU ms per turn: the whole machine", v(cost["processes"].get("machine (all processes)"), "", 2))
    t.add_row(
        "timeouts: users waiting for a reply / operators for a turn's messages; errors",
        f"{conv['reply_timeouts']} / {conv['operator_wait_timeouts']}; {sum(conv['errors'].values())}",
    )
    for name, prof in (conv.get("profiles") or {}).items():
        libs = ", ".join(f"{lib} {share:.0%}" for lib, share in list(prof.get("self_by_library", {}).items())[:4])
        t.add_row(f"py-spy, self time by library: {name}", libs or "-")
    console.print(t)
