"""Every knob of the benchmark, the smoke preset, and how keywords become options."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Options:
    """Every knob of the benchmark (each is a keyword of `main`)."""

    users: int = 200  # simulated users (each writes into its own chats)
    http_users: int = 16  # of them, how many write through ingest HTTP when direct_kafka is on
    operators: int = 40  # simulated operators in the load phases
    user_think_ms: float = 0.0  # pause between two messages of one user (0: as fast as acknowledged)
    operator_think_ms: float = 20.0  # pause between a pull and the reply/release (uniform 0.5x..1.5x)
    release_share: float = 0.1  # share of pulled chats released instead of answered
    messages_per_chat: int = 6  # a user opens a new chat after this many messages
    direct_kafka: bool = True  # users (all but http_users) produce straight to chat.inbound
    reply_via: str = "ingest"  # operators reply through "ingest" (HTTP) or "kafka"
    backlog_cap: int = 1500  # users wait while acked-but-not-applied inbound events exceed this
    warmup_s: float = 10.0  # load before the measured window of the max phase
    duration_s: float = 60.0  # measured window of the max phase
    half_duration_s: float = 30.0  # measured window at half the max throughput (0 skips the phase)
    half_rate: float = 0.0  # user messages/s of the half phase (0: half of what `max` applied)
    push_streams: int = 100  # phase half: chat streams (SSE) opened to time operator replies (0: none)
    drain_timeout_s: float = 90.0  # bound on waiting for the assigner to catch up after a phase
    # The conversation phase (conversation.py): every user and operator over HTTP, closed loop.
    conversation_users: int = 200  # users, each in its own chat (a chat token, its stream, its messages)
    conversation_operators: int = 100  # operators pulling over the assigner's API, replying through ingest
    conversation_warmup_s: float = 5.0
    conversation_duration_s: float = 30.0  # measured window (0 skips the phase)
    messages_per_turn: int = 3  # user messages before the user waits for the operator's reply
    turns_per_chat: int = 5  # a user opens a new chat (token, stream) after this many turns
    only_conversation: bool = False  # only pgbench, the SQL peer and the conversation phase, then the checks
    sql_peer: bool = True  # the SQL reference peer (sql/peer/) on a scratch database, with pgbench
    sql_peer_seconds: int = 20
    pgbench: bool = True  # run pgbench -N on a scratch database of the same server
    pgbench_seconds: int = 15
    pgbench_clients: int = 8
    pgbench_threads: int = 2
    scale_check: bool | None = None  # default: on when the bench starts its own stack
    scale_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    scale_operators: int = 200
    scale_duration_s: float = 15.0  # measured pulls per size (after 2 s of warm-up)
    scale_think_ms: float = 1000.0  # pause between an operator's release and its next pull
    scale_routed: bool = False  # the scale check over 20 queues, 8 skill sets, pullers with mixed profiles
    profile: bool = False  # py-spy record the services during the max phase
    database: str = "switchboard_bench"
    partitions: int = 6
    output: str = "artifacts/bench/bench.json"
    plot: str = "artifacts/bench/bench.png"
    ingest_url: str | None = None  # use a running stack instead of starting one
    assigner_url: str | None = None
    stats_url: str | None = None
    delivery_url: str | None = None  # with a running stack: where the push latency's streams are read
    keep: bool = False  # keep the bench database and topics afterwards
    smoke: bool = False  # tiny numbers, a few seconds (CI)
    seed: int = 20250601


SMOKE = dict(
    users=6,
    http_users=2,
    operators=3,
    user_think_ms=20.0,
    operator_think_ms=5.0,
    warmup_s=1.0,
    duration_s=3.0,
    half_duration_s=2.0,
    push_streams=10,
    drain_timeout_s=60.0,
    conversation_users=6,
    conversation_operators=3,
    conversation_warmup_s=1.0,
    conversation_duration_s=3.0,
    sql_peer_seconds=2,
    pgbench_seconds=2,
    pgbench_clients=2,
    pgbench_threads=1,
    scale_sizes=(100, 1_000),
    scale_operators=10,
    scale_duration_s=2.0,
    scale_think_ms=50.0,
    backlog_cap=500,
)


def make_options(**options) -> Options:
    """Options from keywords; `smoke=True` starts from the tiny preset, explicit keywords still win."""
    known = {f.name for f in fields(Options)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if options.get("smoke"):
        values.update(SMOKE)
    values.update({k: v for k, v in options.items() if v is not None})
    if "scale_sizes" in values and isinstance(values["scale_sizes"], str):
        values["scale_sizes"] = tuple(int(x) for x in values["scale_sizes"].split(",") if x.strip())
    opts = Options(**values)
    if opts.reply_via not in ("ingest", "kafka"):
        raise ValueError("reply_via must be 'ingest' or 'kafka'")
    if opts.half_rate < 0:
        raise ValueError("half_rate must be 0 (half of max) or more")
    if opts.push_streams < 0:
        raise ValueError("push_streams must be 0 (off) or more")
    if opts.users < 1 or opts.operators < 1:
        raise ValueError("users and operators must be at least 1")
    if opts.conversation_users < 1 or opts.conversation_operators < 1:
        raise ValueError("conversation users and operators must be at least 1")
    if opts.messages_per_turn < 1 or opts.turns_per_chat < 1:
        raise ValueError("messages_per_turn and turns_per_chat must be at least 1")
    if opts.only_conversation and opts.conversation_duration_s <= 0:
        raise ValueError("only_conversation needs a conversation_duration_s above 0")
    return opts
