"""The conversation phase's pure pieces: CPU per turn, the phase's figures, the comparison with the SQL
peer, how a user waits for its reply, parsing pgbench, and finding Kafka's and Postgres's pids."""

import asyncio
import os
from collections import defaultdict

import pytest

from switchboard.bench.conversation import Inbox, Observed, Replies, unanswered_user_messages
from switchboard.bench.conversation_report import client_note, compare, cpu_ms_per_turn, summarize
from switchboard.bench.options import SMOKE, make_options
from switchboard.bench.pgbench import PEER_DIR, parse_pgbench
from switchboard.bench.resources import pid_in_file, postgres_pid

CPU0 = {
    "ingest": 10.0,
    "assigner": 20.0,
    "kafka broker": 5.0,
    "postgres (all sessions)": 40.0,
    "bench client": 3.0,
    "machine (all processes)": 100.0,
    "machine steal (other VMs)": 1.0,
}


def _after(**spent) -> dict:
    return {k: v + spent.get(k.split(" ")[0], 0.0) for k, v in CPU0.items()}


def test_cpu_per_turn_sums_the_stack_and_keeps_the_load_generator_and_machine_apart():
    # 10 s at 100 turns/s = 1,000 turns
    cpu1 = _after(ingest=2.0, assigner=3.0, kafka=1.0, postgres=4.0, bench=1.0, machine=12.0)

    cost = cpu_ms_per_turn(CPU0, cpu1, 10.0, 100.0)

    assert cost["processes"]["ingest"] == 2.0 and cost["processes"]["postgres (all sessions)"] == 4.0
    assert cost["stack_total"] == 10.0  # ingest + assigner + kafka + postgres, not the client, not the machine
    assert cost["bench_client"] == 1.0 and cost["bench_client_share_of_stack"] == 0.1
    assert cost["processes"]["machine (all processes)"] == 12.0


def test_no_turns_gives_no_cost_rather_than_a_division_by_zero():
    cost = cpu_ms_per_turn(CPU0, _after(ingest=1.0), 10.0, 0.0)

    assert cost["stack_total"] is None and cost["processes"] == {}


def test_a_load_generator_heavier_than_a_quarter_of_the_stack_gets_a_note():
    light = {"cpu_ms_per_turn": {"bench_client": 1.0, "stack_total": 10.0, "bench_client_share_of_stack": 0.1}}
    heavy = {"cpu_ms_per_turn": {"bench_client": 4.0, "stack_total": 10.0, "bench_client_share_of_stack": 0.4}}

    assert client_note(light) is None
    assert "40%" in client_note(heavy) and "4.0 ms" in client_note(heavy)


def test_the_phase_figures_count_only_the_measured_window():
    a, b = 1000.0, 1010.0
    per_s = {
        "answered": defaultdict(int, {s: 50 for s in range(990, 1020)}),
        "user": defaultdict(int, {s: 150 for s in range(990, 1020)}),
        "operator": defaultdict(int, {s: 50 for s in range(990, 1020)}),
    }
    seen = Observed()
    seen.ingest = [(999.0, 9.0, "user"), (1001.0, 0.010, "user"), (1002.0, 0.030, "operator")]
    seen.pulls = [(1001.0, 0.005, "assigned"), (1003.0, 0.002, "empty"), (1011.0, 9.0, "assigned")]
    seen.turns = [(1004.0, 0.2), (1012.0, 9.0)]
    cpu1 = _after(ingest=5.0, assigner=5.0)

    out = summarize((a, b), seen, per_s, CPU0, cpu1)

    assert out["turns_per_s"] == 50 and out["user_messages_per_turn"] == 3.0
    assert out["ingest_latency_ms"]["count"] == 2
    assert out["ingest_latency_ms"]["by_sender"]["operator"]["p50"] == 30.0
    assert out["pull_latency_ms"]["count"] == 2 and out["pull_latency_ms"]["max"] == 5.0
    assert out["pulls_per_turn"] == {"assigned": 0.002, "empty": 0.002}
    assert out["turn_latency_ms"]["count"] == 1 and out["turn_latency_ms"]["p99"] == 200.0
    assert out["replies_seen_per_s"] == 0.1
    assert out["cpu_cores"]["ingest"] == 0.5
    assert out["cpu_ms_per_turn"]["stack_total"] == 20.0  # 10 CPU s over 500 turns


def test_the_comparison_puts_our_turns_next_to_the_sql_peer_and_pgbench():
    vs = compare(270.0, {"turns_per_s": 900.0}, {"tps": 2700.0})

    assert vs["ratio_to_sql_peer"] == 0.3 and vs["sql_peer_turns_per_pgbench_tps"] == 0.333
    assert compare(270.0, None, None)["ratio_to_sql_peer"] is None


def test_a_user_waits_for_a_reply_read_after_its_last_message_was_acknowledged():
    async def scenario():
        replies = Replies()
        replies.seen(10.0)  # a reply to an earlier message: not the one this turn waits for
        waiting = asyncio.create_task(replies.after(11.0, 5.0, lambda: True))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        replies.seen(12.0)
        assert await waiting == 12.0
        assert await replies.after(11.5, 5.0, lambda: True) == 12.0  # already there: no wait
        assert await replies.after(13.0, 0.05, lambda: True) is None  # none came in time

    asyncio.run(scenario())


def test_a_waiting_user_stops_when_the_phase_ends():
    async def scenario():
        replies, running = Replies(), [True]
        waiting = asyncio.create_task(replies.after(1.0, 30.0, lambda: running[0]))
        await asyncio.sleep(0.01)
        running[0] = False
        replies.changed.set()  # what Conversation.stop does for every waiting user
        assert await asyncio.wait_for(waiting, 1.0) is None

    asyncio.run(scenario())


def test_an_operator_counts_the_user_messages_since_the_last_reply():
    messages = [
        {"message_id": "c1-m0", "sender": "user"},
        {"message_id": "r0", "sender": "operator"},
        {"message_id": "c1-m1", "sender": "user"},
        {"message_id": "c1-m2", "sender": "user"},
    ]

    assert unanswered_user_messages(messages) == {"c1-m1", "c1-m2"}
    assert unanswered_user_messages(messages[:2]) == set()


def test_an_operator_waits_for_the_turns_messages_on_its_stream_by_chat():
    async def scenario():
        inbox = Inbox()
        inbox.seen("bX-cu2-c0-m7")  # another chat's message
        waiting = asyncio.create_task(inbox.wait_for("bX-cu1-c3", {"bX-cu1-c3-m4"}, 3, 5.0, lambda: True))
        await asyncio.sleep(0.01)
        inbox.seen("bX-cu1-c3-m4")  # in the pull's answer and on the stream: counted once
        inbox.seen("bX-cu1-c3-m5")
        await asyncio.sleep(0.01)
        assert not waiting.done()
        inbox.seen("bX-cu1-c3-m6")
        assert await waiting is True
        assert await inbox.wait_for("bX-cu9-c0", set(), 1, 0.05, lambda: True) is False

    asyncio.run(scenario())


def test_pgbench_output_gives_tps_without_connection_time():
    stdout = (
        "number of transactions actually processed: 12000\n"
        "latency average = 6.645 ms\n"
        "initial connection time = 12.345 ms\n"
        "tps = 1203.9 (without initial connection time)\n"
    )

    assert parse_pgbench(stdout) == {"tps": 1203.9, "latency_avg_ms": 6.645}
    assert parse_pgbench("no figures") == {"tps": None, "latency_avg_ms": None}


def test_the_sql_peer_files_are_in_the_repository():
    script = (PEER_DIR / "turn.pgbench").read_text()

    assert "sqlpeer.user_message" in script and "sqlpeer.assign_next" in script
    assert "sqlpeer.operator_reply" in script
    assert "CREATE SCHEMA sqlpeer" in (PEER_DIR / "schema.sql").read_text()


def test_pids_come_from_pid_files_and_a_stale_file_gives_none(tmp_path):
    (tmp_path / "kafka.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n/var/lib/postgresql/15/main\n1733200000\n5432\n")
    (tmp_path / "stale.pid").write_text("999999999")
    (tmp_path / "junk.pid").write_text("not a pid")

    assert pid_in_file(tmp_path / "kafka.pid") == os.getpid()
    assert postgres_pid(str(tmp_path), port=1) == os.getpid()
    assert pid_in_file(tmp_path / "stale.pid") is None
    assert pid_in_file(tmp_path / "junk.pid") is None
    assert pid_in_file(tmp_path / "absent.pid") is None


def test_the_smoke_preset_shortens_the_conversation_and_only_conversation_needs_it():
    opts = make_options(smoke=True)

    assert opts.conversation_duration_s == SMOKE["conversation_duration_s"] < 10
    assert opts.sql_peer_seconds == SMOKE["sql_peer_seconds"]
    with pytest.raises(ValueError):
        make_options(only_conversation=True, conversation_duration_s=0)
    with pytest.raises(ValueError):
        make_options(messages_per_turn=0)
