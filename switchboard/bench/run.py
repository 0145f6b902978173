"""One run of the benchmark from start to end: the stack, pgbench and the SQL reference peer, the
conversation phase and its drain, phase `max` and its drain, phase `half` and its drain, the checks,
the scale check, then the report written, plotted and printed (`only_conversation`: no `max`, `half`
or scale check)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shared.settings import Settings
from switchboard.bench.checks import integrity, load_messages, run_reconcile, stats_lag, wait_drained
from switchboard.bench.conversation import conversation_phase
from switchboard.bench.conversation_report import client_note, compare
from switchboard.bench.idle_streams import raise_fd_limit
from switchboard.bench.load import Load, Recorder
from switchboard.bench.metrics import apply_summary
from switchboard.bench.options import Options, make_options
from switchboard.bench.pgbench import run_pgbench, run_sql_peer
from switchboard.bench.plot import write_plot
from switchboard.bench.profiling import collect_profiles, start_profiles
from switchboard.bench.push import PushWatch
from switchboard.bench.report import (
    REPORT_VERSION,
    headline,
    integrity_ok,
    phase_report,
    print_report,
    resources,
    targets,
    timeline,
)
from switchboard.bench.scale import scale_check
from switchboard.bench.stack import Stack
from switchboard.bench.tasks import cancel_and_wait

console = Console(stderr=True)


@dataclass
class Measured:
    """What the load phases leave for the report: spans, measured windows, CPU and histogram snapshots."""

    t_load: float
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start, end), drains too
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # measured window of each phase
    cpu: dict[str, tuple[dict, dict]] = field(default_factory=dict)
    hists: dict[str, dict] = field(default_factory=dict)
    extras: dict[str, dict] = field(default_factory=lambda: {"max": {}, "half": {}})
    conversation_window: tuple[float, float] | None = None


async def run(settings: Settings, opts: Options) -> dict:
    """The whole benchmark; returns the report (the stack is stopped whatever happens)."""
    run_id = f"{time.strftime('%H%M%S')}{secrets.token_hex(2)}"
    stack = Stack(settings, opts, run_id)
    report = _report_head(run_id, opts, stack)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    pool = None
    try:
        with progress:
            t = progress.add_task(
                "starting   the four services" if not stack.external else "checking   the stack", total=None
            )
            if opts.conversation_duration_s > 0:
                # Three sockets an actor (two connections and a stream) on this side; the services
                # started next inherit the limit (delivery holds every stream, ingest every user).
                report["fd_limit"] = raise_fd_limit(3 * (opts.conversation_users + opts.conversation_operators))
            await stack.start()
            progress.update(t, total=1, completed=1, description="ready      services up")
            loopback = urlparse(stack.database_url).hostname in ("127.0.0.1", "localhost", "::1")
            pool = await asyncpg.create_pool(
                stack.database_url,
                min_size=1,
                max_size=4,
                ssl=False if loopback else None,
                server_settings={"application_name": "switchboard-bench", "statement_timeout": "0"},
            )
            report["pgbench"] = await _pgbench(stack, opts, progress) if opts.pgbench else None
            report["sql_peer"] = await _sql_peer(stack, opts, progress) if opts.sql_peer else None
            load_pulls = await _load_and_check(stack, pool, opts, run_id, report, progress)
            report["resources"] = resources(report, stack.watched)
            headline(report, load_pulls)
            report["integrity"]["ok"] = integrity_ok(report["integrity"])
            report["targets"] = targets(report)
            report["finished_at"] = datetime.now(UTC).isoformat()
    finally:
        if pool is not None:
            await pool.close()
        await stack.stop()
    return report


def _report_head(run_id: str, opts: Options, stack: Stack) -> dict[str, Any]:
    """What the report says before anything ran: the run, the machine, the options, the stack."""
    load_avg = os.getloadavg()
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in load_avg],
            "python": sys.version.split()[0],
        },
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        "stack": {
            "mode": "external" if stack.external else "spawned",
            "urls": stack.urls,
            "topic_prefix": stack.settings.topic_prefix,
            "database": urlparse(stack.database_url).path.lstrip("/"),
        },
        "notes": [],
    }
    if load_avg[0] > (os.cpu_count() or 1) * 0.5:
        report["notes"].append(
            f"the machine was busy before the run (load average {load_avg[0]:.1f} on "
            f"{os.cpu_count()} cores): figures are pessimistic"
        )
    return report


async def _pgbench(stack: Stack, opts: Options, progress: Progress) -> dict:
    t = progress.add_task(
        f"pgbench    -N -c {opts.pgbench_clients} -j {opts.pgbench_threads} -T {opts.pgbench_seconds}", total=None
    )
    result = await run_pgbench(stack.database_url, f"{opts.database}_pgbench", opts)
    progress.update(t, total=1, completed=1, description=f"pgbench    {result['tps']:,.0f} TPS (simple-update)")
    return result


async def _sql_peer(stack: Stack, opts: Options, progress: Progress) -> dict:
    t = progress.add_task(
        f"sql peer   -f turn.pgbench -c {opts.pgbench_clients} -j {opts.pgbench_threads} -T {opts.sql_peer_seconds}",
        total=None,
    )
    result = await run_sql_peer(stack.database_url, f"{opts.database}_sqlpeer", opts)
    progress.update(t, total=1, completed=1, description=f"sql peer   {result['turns_per_s']:,.0f} turns/s")
    return result


async def _conversation(
    stack: Stack, pool: asyncpg.Pool, opts: Options, run_id: str, rec: Recorder, report: dict, m: Measured, progress
) -> None:
    """The conversation phase, when it is on and delivery (where users read the replies) is there."""
    if opts.conversation_duration_s <= 0:
        return
    if "delivery" not in stack.urls:
        report["notes"].append("no conversation phase: its users read replies from delivery (--delivery-url)")
        return
    t0 = time.time()
    conv, window = await conversation_phase(stack, pool, opts, run_id, rec, progress)
    conv["comparison"] = compare(conv["turns_per_s"], report.get("sql_peer"), report.get("pgbench"))
    report["conversation"] = conv
    m.spans += [("warm-up", t0, window[0]), ("conversation", *window), ("drain", window[1], time.time())]
    m.conversation_window = window
    note = client_note(conv)
    if note:
        report["notes"].append(note)


async def _load_and_check(
    stack: Stack, pool: asyncpg.Pool, opts: Options, run_id: str, report: dict, progress: Progress
) -> list:
    """Both load phases, the checks, the scale check; fills the report; returns the load phases' pulls."""
    rec = Recorder()
    scale_on = opts.scale_check if opts.scale_check is not None else not stack.external
    scale_on = scale_on and not opts.only_conversation
    m = Measured(t_load=time.time())
    await _conversation(stack, pool, opts, run_id, rec, report, m, progress)
    async with Load(stack, opts, run_id, rec, progress) as load:
        monitor = asyncio.create_task(load.monitor())
        try:
            if not opts.only_conversation:
                await _phase_max(load, pool, opts, report, m, progress)
                if opts.half_duration_s > 0:
                    await _phase_half(load, pool, opts, m, progress)
            t_end = time.time()
            task = progress.add_task("check      lost / doubled, reconcile", total=None)
            users, ops, per_s = await load_messages(pool, run_id)
            integ = await integrity(pool, rec, users, ops)
            integ["reconcile"] = await run_reconcile(stack.settings)
            windows = dict(m.windows)
            if m.conversation_window is not None:
                windows["conversation"] = m.conversation_window
            lag = await stats_lag(stack.settings, pool, windows)
            if "conversation" in report:
                report["conversation"]["stats_lag_ms"] = lag.get("conversation")
            lost = integ["user_messages_lost"] + integ["operator_messages_lost"]
            differences = integ["reconcile"]["differences"]
            progress.update(
                task, total=1, completed=1, description=f"check      lost {lost}, reconcile differences {differences}"
            )
            report["phases"] = {}
            for name, window in m.windows.items():
                c0, c1 = m.cpu[name]
                report["phases"][name] = phase_report(
                    window,
                    rec,
                    users,
                    per_s,
                    c0,
                    c1,
                    m.hists[name],
                    {**m.extras.get(name, {}), "stats_lag_ms": lag.get(name)},
                )
            report["timeline"] = timeline(rec, users, per_s, m.t_load, t_end, m.spans)
            report["phase_spans"] = [(n, round(a - m.t_load, 2), round(b - m.t_load, 2)) for n, a, b in m.spans]
            load_pulls = list(rec.pulls)
            if scale_on:
                report["scale_check"] = await scale_check(load, pool, opts, progress)
                task = progress.add_task("check      final reconcile", total=None)
                integ["reconcile_final"] = await run_reconcile(stack.settings)
                progress.update(
                    task,
                    total=1,
                    completed=1,
                    description=f"check      final reconcile differences {integ['reconcile_final']['differences']}",
                )
            else:
                report["scale_check"] = None
                integ["reconcile_final"] = integ["reconcile"]
            report["integrity"] = integ
        finally:
            await cancel_and_wait(monitor)
    return load_pulls


async def _phase_max(
    load: Load, pool: asyncpg.Pool, opts: Options, report: dict, m: Measured, progress: Progress
) -> None:
    """Warm-up then the measured window, in one continuous run, as fast as the system takes it; then drain."""
    task = progress.add_task("max", total=opts.warmup_s + opts.duration_s)
    spies: list = []

    def profile_measured_window() -> None:
        # py-spy samples the measured window only (it starts when the warm-up ends)
        spies.extend(
            start_profiles(load.stack.watched.pids, max(1, opts.duration_s - 1), Path(opts.output).parent / "profiles")
        )

    profiling = opts.profile and not load.stack.external
    await _measure(
        load,
        m,
        "max",
        "max",
        opts.warmup_s,
        opts.duration_s,
        None,
        task,
        profile_measured_window if profiling else None,
    )
    if spies:
        report["profiles"] = await collect_profiles(spies)
    m.extras["max"]["drain"] = await _drain(
        load, pool, opts, m, "drain      waiting for the assigner to catch up", progress
    )


def half_phase_rate(requested: float, applied_per_s: dict[int, int], max_window: tuple[float, float]) -> float:
    """The half phase's pace in user messages a second: `requested` (`--half-rate`) when above 0, else half
    of what `max` applied a second over the whole seconds of its window (at least 1)."""
    if requested > 0:
        return requested
    secs = range(math.ceil(max_window[0]), math.floor(max_window[1]))
    return max(1.0, sum(applied_per_s.get(s, 0) for s in secs) / max(1, len(secs)) / 2)


async def _phase_half(load: Load, pool: asyncpg.Pool, opts: Options, m: Measured, progress: Progress) -> None:
    """Users paced at half the applied rate of `max` (or at `--half-rate`; after 2 s of warm-up); then drain."""
    applied = {} if opts.half_rate > 0 else (await load_messages(pool, load.run_id))[2]["user"]
    rate = half_phase_rate(opts.half_rate, applied, m.windows["max"])
    m.extras["half"]["target_rate"] = round(rate, 1)
    task = progress.add_task("half", total=opts.half_duration_s + 2)
    delivery = load.stack.urls.get("delivery")
    push = None
    if opts.push_streams and delivery:
        push = PushWatch(
            delivery,
            load.frontend_token,
            opts.push_streams,
            opts.half_duration_s + 2,
            load.stack.settings.group("delivery"),
        )
        await push.start()
    load.push = push
    try:
        await _measure(load, m, "half", f"half@{rate:,.0f}/s", 2.0, opts.half_duration_s, rate, task)
    finally:
        load.push = None
    m.extras["half"]["drain"] = await _drain(load, pool, opts, m, "drain", progress)
    if push is not None:
        t = progress.add_task("push       waiting for the replies on the sampled chat streams", total=None)
        figures = m.extras["half"]["push_latency_ms"] = await push.stop(m.windows["half"])
        progress.update(
            t,
            total=1,
            completed=1,
            description=f"push       {figures['count']} replies on {figures['streams_opened']} chat streams, "
            f"p99 {figures['p99']} ms, missing {figures['missing']}",
        )


async def _measure(
    load: Load,
    m: Measured,
    name: str,
    label: str,
    warmup_s: float,
    seconds: float,
    rate: float | None,
    task,
    on_warm=None,
) -> None:
    """Load for warm-up + measured seconds; snapshot CPU and the assigner's histograms at both ends."""
    watched = load.stack.watched
    marks: dict[str, Any] = {}
    t0 = time.time()
    marker = asyncio.create_task(_mark_after(warmup_s, load, marks))
    if on_warm is not None:
        marker.add_done_callback(lambda _: on_warm())
    await load.run_phase(label, warmup_s + seconds, rate, task)
    await marker
    t1 = time.time()
    start = marks.get("start", t0 + warmup_s)
    samples_after = await load.scrape()
    m.cpu[name] = (marks.get("cpu") or watched.cpu(), watched.cpu())
    m.hists[name] = apply_summary(marks.get("samples"), samples_after, load.stack.settings.group("assigner"))
    m.extras[name]["backlog_at_end"] = load.backlog
    m.spans += [("warm-up", t0, start), (name, start, t1)]
    m.windows[name] = (start, t1)


async def _mark_after(delay: float, load: Load, marks: dict) -> None:
    """Snapshot CPU and the assigner's metrics when the warm-up ends."""
    await asyncio.sleep(delay)
    marks.setdefault("start", time.time())
    marks.setdefault("cpu", load.stack.watched.cpu())
    marks["samples"] = await load.scrape()


async def _drain(load: Load, pool: asyncpg.Pool, opts: Options, m: Measured, label: str, progress: Progress) -> dict:
    """Wait (bounded) until the assigner stored every acknowledged message of the run."""
    d0 = time.time()
    task = progress.add_task(label, total=None)
    drained = await wait_drained(pool, load.rec, load.run_id, opts.drain_timeout_s)
    progress.update(
        task,
        total=1,
        completed=1,
        description=f"drain      {drained['stored']:,}/{drained['expected']:,} stored in {drained['seconds']} s",
    )
    m.spans.append(("drain", d0, time.time()))
    return drained


def main(settings: Settings, **options) -> int:
    """Entry point of `switchboard bench`: run, print, write JSON (and PNG); 0 when nothing was lost."""
    opts = make_options(**options)
    started = time.monotonic()
    # The load generator shares the machine with what it measures: the same event loop the
    # services run on (uvloop, as uvicorn picks it) keeps its own CPU down.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        report = runner.run(run(settings, opts))
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(opts.output)
    if not out.is_absolute():
        out = Path.cwd() / out
    plot = Path(opts.plot)
    if not plot.is_absolute():
        plot = Path.cwd() / plot
    report["plot"] = write_plot(report, plot) if opts.plot else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    console.print(f"report: {out}" + (f"   plot: {report['plot']}" if report.get("plot") else ""))
    return 0 if report["integrity"]["ok"] else 1


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it; without it, the standard loop
        return None
    return uvloop.new_event_loop
