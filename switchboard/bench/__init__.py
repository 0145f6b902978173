"""`switchboard bench`: end-to-end throughput and latency, side by side with pgbench on the same Postgres.

What one run does (every load bounded in time; loopback only):

1. Starts the four services as real subprocesses (`python -m switchboard run <service> --port P`) on
   free ports, with a database of their own (`switchboard_bench`, recreated) and a fresh topic prefix,
   or uses a running stack given by `--ingest-url/--assigner-url/--stats-url`.
2. Runs pgbench's simple-update script (`pgbench -N`) on a scratch database of the same server, then
   the SQL reference peer (`sql/peer/`: the whole job as Postgres functions, `pgbench -f turn.pgbench`).
   Then the conversation phase: every user (a chat widget: chat token, chat stream, messages through
   ingest) and every operator (pull, reply through ingest) over HTTP, closed loop, a user's next
   messages only once its reply was read on its stream; CPU ms per turn of every process
   (`--only-conversation`: this and the checks, nothing else).
3. Closed-loop load through the public interfaces. Simulated users write user messages, through
   ingest's HTTP API or straight to `chat.inbound` with the same envelope; simulated operators pull
   (`POST /v1/assignments/next`), think, then reply through ingest (or Kafka), or release.
   Phase `max`: users as fast as the system takes them (held back only when the assigner's backlog
   passes a cap): the applied rate is the sustained throughput. Phase `half`: users paced at half
   that rate, where apply latency and push latency are judged: during it the bench opens SSE chat
   streams (chat tokens from delivery) for a sample of the chats operators pull (`--push-streams`).
4. Checks nothing was lost or doubled: every acknowledged message is stored once, per-chat counts
   match, and `reconcile` finds zero differences between stats and the assigner.
5. Scale check: 1 thousand, 100 thousand and 1 million waiting chats bulk-loaded with
   generate_series into `assigner.chats`, 200 operators pulling and releasing; pull p50/p99 per size.
6. Writes a JSON report and a PNG plot of throughput and latency over time; prints the targets.

Latency definitions (all wall clock of this one machine):
- apply latency: the frontend hands a user message over (HTTP request start, or Kafka send of an
  envelope whose occurred_at is that instant) -> `assigner.messages.recorded_at`, the instant the
  assigner decided it inside the transaction that commits it. Cross-checked with the assigner's
  `switchboard_event_apply_latency_seconds` histogram (occurred_at -> after commit).
- pull latency: client side, request written -> response read.
- stats lag: a lifecycle fact's occurred_at -> `stats.processed_events.applied_at` (its batch).
- push latency: an operator's reply accepted by ingest (its 202 read) -> the reply's `message`
  event read on the chat's stream, as the user's widget sees it. Cross-checked with delivery's
  `switchboard_delivery_push_latency_seconds` histogram (fact occurred_at -> written to the stream).

Where each job lives: `options` (the knobs), `processes` and `stack` (the services, their database
and topics), `client` (HTTP), `load` (users, operators, the backlog gate), `metrics` (the services'
Prometheus metrics), `resources` (CPU and memory), `pgbench`, `checks` (lost, doubled, reconcile,
stats lag; SQL in `sql/queries.sql`), `scale`, `profiling`, `report`, `plot`, `run` (one run from
start to end), `push` (the sampled chat streams and push latency), `sse` (reading an event stream),
`conversation` (the conversation phase's users and operators) and `conversation_report` (its figures:
CPU per turn, the comparison with the SQL peer), `ingest` (`switchboard bench-ingest`, ingest alone), `idle_streams` (`switchboard bench-streams`:
one delivery instance holding thousands of idle chat streams).
"""

from __future__ import annotations

from shared.settings import Settings
from switchboard.bench.options import SMOKE, Options, make_options
from switchboard.bench.report import REPORT_VERSION

__all__ = ["REPORT_VERSION", "SMOKE", "Options", "main", "make_options"]


def main(settings: Settings, **options) -> int:
    """Entry point of `switchboard bench`: run, print, write JSON (and PNG); 0 when nothing was lost."""
    try:
        from switchboard.bench.run import main as run_main
    except ModuleNotFoundError as exc:
        if exc.name == "psutil":  # matplotlib, the extra's other package, is optional (plot.py)
            raise SystemExit(
                f"switchboard bench needs {exc.name}: install the bench extra "
                "(pip install -e '.[bench]', or run `make bench`)"
            ) from None
        raise
    return run_main(settings, **options)
