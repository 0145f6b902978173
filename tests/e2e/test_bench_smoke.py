"""`switchboard bench` in smoke mode: the four services as real subprocesses, a few seconds of load,
the conversation phase in its smoke form (all phases, then that phase alone).

Asserts the report's structure and that nothing was lost or doubled; never a timing figure. Also:
every option docs/performance.md documents is an option of the command, and `python -m
switchboard.bench` is that same command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import fields
from pathlib import Path

import typer

from shared.settings import Settings
from switchboard import bench
from switchboard.cli import app
from tests import harness

REPO = Path(__file__).resolve().parents[2]

BASE_URL = os.environ.get("SWITCHBOARD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/switchboard")
BOOTSTRAP = os.environ.get("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

LATENCY_KEYS = {"count", "p50", "p90", "p99", "max"}


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_smoke_bench_writes_a_complete_report_and_loses_nothing(infra, tmp_path: Path):
    settings = Settings(auth_secret=harness.TEST_SECRET, database_url=BASE_URL, kafka_bootstrap_servers=BOOTSTRAP)
    database = f"sb_bench_{uuid.uuid4().hex[:10]}"
    output, plot = tmp_path / "bench.json", tmp_path / "bench.png"

    code = bench.main(settings, smoke=True, database=database, output=str(output), plot=str(plot))

    report = json.loads(output.read_text())
    assert code == 0, report["integrity"]
    assert report["version"] == bench.REPORT_VERSION
    assert report["stack"]["mode"] == "spawned" and report["stack"]["database"] == database

    # What the load produced arrived exactly once, and stats agrees with the assigner.
    integrity = report["integrity"]
    assert integrity["ok"] is True
    assert integrity["user_messages_acked"] > 0 and integrity["operator_messages_acked"] > 0
    assert integrity["user_messages_lost"] == integrity["operator_messages_lost"] == 0
    assert integrity["user_messages_unexpected"] == integrity["operator_messages_unexpected"] == 0
    assert integrity["user_messages_stored"] >= integrity["user_messages_acked"]
    assert integrity["chats_with_message_count_mismatch"] == 0
    assert integrity["chats_with_two_active_assignments"] == 0
    for key in ("reconcile", "reconcile_final"):
        assert integrity[key]["differences"] == 0 and integrity[key]["not_quiescent"] is None
        assert integrity[key]["compared"]["chat"] > 0

    headline = report["headline"]
    assert set(headline) >= {
        "user_events_per_s",
        "turns_per_s",
        "pgbench_tps",
        "events_per_pgbench_tps",
        "apply_p50_ms_half",
        "apply_p99_ms_half",
        "push_p50_ms_half",
        "push_p99_ms_half",
        "pull_p50_ms",
        "pull_p99_ms",
        "stats_lag_p99_ms",
        "pull_p99_ms_200_operators",
    }
    assert headline["user_events_per_s"] > 0 and headline["pgbench_tps"] > 0
    assert report["pgbench"]["script"] == "simple-update (-N)"
    _assert_conversation(report)

    for name in ("max", "half"):
        phase = report["phases"][name]
        assert phase["user_events_per_s"] > 0 and phase["window_s"] > 0
        # The assigner's own histograms, read from its /metrics, cover the phase.
        assert phase["assigner_histogram_apply_ms"]["batches"] > 0
        assert phase["assigner_histogram_apply_ms"]["p99"] is not None
        assert set(phase["apply_latency_ms"]) >= LATENCY_KEYS and phase["apply_latency_ms"]["count"] > 0
        assert set(phase["pull_latency_ms"]) >= LATENCY_KEYS and phase["pull_latency_ms"]["count"] > 0
        assert phase["stats_lag_ms"]["count"] > 0 and phase["stats_lag_ms"]["facts_not_applied"] == 0
        assert phase["drain"]["complete"] is True
    assert report["phases"]["half"]["target_rate"] > 0
    # Push latency: the sampled chats' streams opened with chat tokens; no reply came twice on them.
    push = report["phases"]["half"]["push_latency_ms"]
    assert set(push) >= LATENCY_KEYS | {"p95", "missing", "streams_opened", "service_histogram_ms"}
    assert push["streams_opened"] > 0 and push["streams_failed"] == {} and push["duplicates"] == 0

    processes = report["resources"]["processes"]
    for service in ("ingest", "assigner", "assigner_worker", "assigner_relay", "idle_monitor", "stats", "bench client"):
        assert processes[service]["peak_rss_mb"] > 0
        assert processes[service]["cpu_seconds_total"] >= 0
    # Found by the port it listens on; Postgres counts every session, those that ended too.
    assert processes["kafka broker"]["peak_rss_mb"] > 0
    assert processes["postgres (all sessions)"]["cpu_seconds_total"] > 0
    assert report["resources"]["machine_busy_cores_max"] > 0

    scale = report["scale_check"]
    assert [s["waiting_chats"] for s in scale["sizes"]] == list(bench.SMOKE["scale_sizes"])
    for size in scale["sizes"]:
        assert size["waiting_chats_counted"] >= size["waiting_chats"] - scale["operators"]
        assert size["pulls"] > 0 and set(size["pull_latency_ms"]) >= LATENCY_KEYS
        assert size["claim_plan"]["uses_queue_index"] is True
        assert size["server_pull_latency_ms"]["p99"] is not None
    assert scale["p99_ratio_largest_to_smallest"] is not None

    assert len(report["targets"]) == 6
    assert all(set(t) == {"name", "value", "target", "met", "unit"} for t in report["targets"])
    assert report["timeline"] and {"t", "phase", "user_acked", "user_applied", "apply_p99_ms", "pull_p99_ms"} <= set(
        report["timeline"][0]
    )
    if _has_matplotlib():
        assert report["plot"] == str(plot) and plot.stat().st_size > 0
    else:
        assert report["plot"] is None


CONVERSATION_PROCESSES = (
    "ingest",
    "assigner",
    "assigner_worker",
    "assigner_relay",
    "idle_monitor",
    "stats",
    "delivery",
    "kafka broker",
    "postgres (all sessions)",
)


def _assert_conversation(report: dict) -> None:
    """The conversation phase ran over HTTP, turns were answered, and its figures have their shape."""
    peer = report["sql_peer"]
    assert peer["script"] == "sql reference peer (turn.pgbench)" and peer["turns_per_s"] > 0
    conv = report["conversation"]
    assert conv["turns_per_s"] > 0 and conv["window_s"] > 0
    assert conv["users"] == bench.SMOKE["conversation_users"] and conv["messages_per_turn"] == 3
    assert conv["chats_opened"] >= conv["users"]
    for sender in ("user", "operator"):
        lat = conv["ingest_latency_ms"]["by_sender"][sender]
        assert set(lat) >= LATENCY_KEYS and lat["count"] > 0
    assert conv["pull_latency_ms"]["by_result"]["assigned"]["count"] > 0
    assert conv["turn_latency_ms"]["count"] > 0  # users read the replies on their chat streams
    assert conv["pulls_per_turn"]["assigned"] > 0
    assert conv["drain"]["complete"] is True
    assert conv["stats_lag_ms"]["count"] > 0
    cost = conv["cpu_ms_per_turn"]
    for name in CONVERSATION_PROCESSES:
        assert cost["processes"][name] >= 0, name
    assert cost["stack_total"] > 0 and cost["bench_client"] > 0
    assert 0 < cost["bench_client_share_of_stack"]
    vs = conv["comparison"]
    assert vs["sql_peer_turns_per_s"] == peer["turns_per_s"] and vs["pgbench_tps"] == report["pgbench"]["tps"]
    assert vs["ratio_to_sql_peer"] == round(conv["turns_per_s"] / peer["turns_per_s"], 3)
    assert report["headline"]["conversation_turns_per_s"] == conv["turns_per_s"]
    assert report["headline"]["conversation_cpu_ms_per_turn"] == cost["stack_total"]


def test_only_the_conversation_phase_runs_with_its_checks(infra, tmp_path: Path):
    settings = Settings(auth_secret=harness.TEST_SECRET, database_url=BASE_URL, kafka_bootstrap_servers=BOOTSTRAP)
    output = tmp_path / "bench.json"

    code = bench.main(
        settings,
        smoke=True,
        only_conversation=True,
        database=f"sb_bench_{uuid.uuid4().hex[:10]}",
        output=str(output),
        plot=str(tmp_path / "bench.png"),
    )

    report = json.loads(output.read_text())
    assert code == 0, report["integrity"]
    assert report["phases"] == {} and report["scale_check"] is None
    _assert_conversation(report)
    integrity = report["integrity"]
    assert integrity["ok"] is True and integrity["user_messages_acked"] > 0
    assert integrity["user_messages_lost"] == integrity["operator_messages_lost"] == 0
    assert integrity["user_messages_unexpected"] == integrity["operator_messages_unexpected"] == 0
    assert integrity["reconcile"]["differences"] == 0
    assert report["headline"]["user_events_per_s"] is None  # no max phase was run


def _bench_command():
    return typer.main.get_command(app).commands["bench"]


def test_every_documented_bench_option_is_an_option_of_the_command():
    table = (REPO / "docs" / "performance.md").read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = {
        flag
        for line in table.splitlines()
        if line.startswith("| `--")
        for flag in re.findall(r"--[a-z][a-z-]*", line.split("|")[1])
    }
    offered = {flag for param in _bench_command().params for flag in (*param.opts, *param.secondary_opts)}

    assert len(documented) >= 30
    assert documented <= offered, sorted(documented - offered)


def test_every_option_of_the_command_is_a_bench_option():
    known = {f.name for f in fields(bench.Options)}

    assert {param.name for param in _bench_command().params} <= known


def test_python_dash_m_switchboard_bench_is_the_same_command():
    done = subprocess.run(
        [sys.executable, "-m", "switchboard.bench", "--no-such-option"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2, done.stderr
    assert "No such option: --no-such-option" in done.stderr
    assert "python -m switchboard.bench" in done.stderr
