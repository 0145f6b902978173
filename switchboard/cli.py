"""The `switchboard` command: local infrastructure, the services, tokens, migrations."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import typer
from rich.console import Console

from switchboard import services as registry

app = typer.Typer(help="Switchboard: route live chats to human operators.", no_args_is_help=True)
infra_app = typer.Typer(help="Local Kafka and PostgreSQL without Docker.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
console = Console(stderr=True)


def _settings():
    from shared.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _dev_env() -> None:
    """Defaults for local runs: the development secret is allowed only here."""
    from shared.settings import DEV_SECRET

    if "SWITCHBOARD_AUTH_SECRET" not in os.environ:
        os.environ["SWITCHBOARD_AUTH_SECRET"] = DEV_SECRET
        os.environ["SWITCHBOARD_DEV_MODE"] = "1"


def infra_up_impl(echo=console.print) -> None:
    """Start Kafka and Postgres when none answers, create the database and the topics."""
    from deploy.local import kafka, postgres
    from shared.kafka.admin import ensure_topics, kafka_ready
    from shared.settings import Settings

    url = os.environ.get("SWITCHBOARD_DATABASE_URL", Settings.model_fields["database_url"].default)
    bootstrap = os.environ.get(
        "SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", Settings.model_fields["kafka_bootstrap_servers"].default
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # probes of a stopped broker are expected
    postgres.ensure(url, echo=echo)
    echo(f"PostgreSQL ready: {url}")
    if not asyncio.run(kafka_ready(bootstrap, 2)):
        host, _, port = bootstrap.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"Kafka at {bootstrap} does not answer; not starting a local one")
        kafka.start(int(port), echo=echo)
    echo(f"Kafka ready: {bootstrap}")
    partitions = int(os.environ.get("SWITCHBOARD_TOPIC_PARTITIONS", "6"))
    created = asyncio.run(
        ensure_topics(
            Settings(
                auth_secret="x" * 32,
                kafka_bootstrap_servers=bootstrap,
                topic_partitions=partitions,
                topic_prefix=os.environ.get("SWITCHBOARD_TOPIC_PREFIX", ""),
            )
        )
    )
    if created:
        echo(f"created topics: {', '.join(created)}")


@infra_app.command("up")
def infra_up() -> None:
    """Start local Kafka and PostgreSQL (idempotent)."""
    infra_up_impl()


@infra_app.command("down")
def infra_down() -> None:
    """Stop the Kafka broker and the PostgreSQL cluster this project started."""
    from deploy.local import kafka, postgres

    if kafka.stop():
        console.print("Kafka stopped")
    if postgres.stop():
        console.print("PostgreSQL stopped")


@app.command()
def migrate() -> None:
    """Apply every service's pending migrations."""
    from shared import db, migrations

    settings = _settings()

    async def run():
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2, app="migrate")
        async with pool.acquire() as conn:
            for name in registry.NAMES:
                if not registry.has_migrations(name):
                    continue
                done = await migrations.apply(conn, registry.schema(name), registry.migrations_dir(name))
                console.print(f"{name}: {len(done)} migration(s) applied")
        await pool.close()

    asyncio.run(run())


@app.command()
def run(
    service: str = typer.Argument(
        ..., help="ingest | assigner | assigner_worker | assigner_relay | idle_monitor | stats | delivery"
    ),
    port: int | None = typer.Option(None, help="Override the service's HTTP port."),
) -> None:
    """Run one service in the foreground (HTTP and its Kafka loops).

    `assigner` alone does all of the assigner's work unless SWITCHBOARD_ASSIGNER_MODE says otherwise;
    `assigner_worker` is the assigner in worker mode (the consumer) on its own port, `assigner_relay`
    in relay mode (outbox relay, queue gauges, retention) on another.
    """
    import uvicorn

    from shared import gc_tuning, logs

    if service not in registry.PROCESSES:
        names = ", ".join(registry.PROCESSES)
        console.print(f"[red]unknown service {service!r}; choose from {names}[/red]")
        raise typer.Exit(2)
    code, overrides = registry.PROCESSES[service]
    if code != service:
        os.environ.update(overrides)
    settings = _settings()
    logs.configure(service, settings.log_level)
    gc_tuning.tune(settings.gc_threshold0)
    application = registry.module(code).create_app(settings)
    uvicorn.run(
        application,
        host=settings.http_host,
        port=port or settings.port_of(service),
        log_config=None,
        timeout_graceful_shutdown=20,
    )


@app.command()
def token(
    role: str = typer.Option(..., help="frontend | operator | admin"),
    sub: str = typer.Option(..., help="The subject: operator id, frontend name or admin name."),
    ttl: int = typer.Option(12 * 3600, help="Seconds of validity."),
) -> None:
    """Print a signed bearer token."""
    from shared.auth import issue_token

    settings = _settings()
    try:
        typer.echo(issue_token(settings.auth_secret, sub, role, ttl))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _pid_file(name: str):
    from deploy.local.paths import local_dir

    return local_dir() / f"{name}.pid"


# What a terminal, `timeout`, systemd, a container runtime or a CI runner sends to stop a foreground
# command: each is turned into the KeyboardInterrupt that Ctrl-C raises, so all take one path.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_PARENT_AT_START = os.getppid()


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_like_ctrl_c() -> None:
    """Make SIGTERM and SIGHUP (and the death of the parent, e.g. `make`) stop `up` as Ctrl-C does."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored: in the foreground `up`, Ctrl-C stops everything whoever started it.
    signal.signal(signal.SIGINT, _interrupt)
    if sys.platform.startswith("linux"):
        # A parent that dies without passing its signal on (make forwards SIGTERM but not SIGHUP)
        # must not leave `up` and its services behind: have the kernel send us SIGTERM then.
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        except (OSError, AttributeError):
            pass
        if os.getppid() != _PARENT_AT_START:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _shield_cleanup() -> None:
    """While stopping, further stop signals are ignored: a second Ctrl-C must not strand a service."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)


@app.command()
def up(
    demo: bool = typer.Option(True, help="Start the demo traffic generator."),
    detach: bool = typer.Option(False, help="Return once everything is ready instead of staying in the foreground."),
) -> None:
    """Start Kafka and Postgres if needed, migrate, start the four services, print URLs and tokens.

    In the foreground, Ctrl-C, SIGTERM and SIGHUP all stop everything it started (`switchboard down`).
    """
    if not detach:
        _stop_like_ctrl_c()
    try:
        _start(demo)
        if detach:
            return
        console.print("Ctrl-C (or SIGTERM, SIGHUP) stops everything this command started.")
        while True:
            # Not signal.pause(): a signal that lands after the interpreter's last check and before the
            # pause() call runs its handler only at the next signal, so `up` would sleep through a stop
            # (seen once: make SIGKILLed, the kernel's parent-death SIGTERM to `up` went unanswered).
            # A bounded sleep runs a pending handler within half a second whatever the timing.
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _shield_cleanup()
    down()


def _start(demo: bool) -> None:
    """Everything `up` does before it waits: infrastructure, migrations, services, demo, the banner."""
    from deploy.local import process
    from deploy.local.paths import local_dir
    from shared.auth import issue_token

    _dev_env()
    infra_up_impl()
    settings = _settings()
    migrate()
    for name, (_, overrides) in registry.PROCESSES.items():
        pid_file = _pid_file(name)
        if process.read_pid(pid_file) is None:
            process.spawn(
                [sys.executable, "-m", "switchboard", "run", name],
                pid_file=pid_file,
                log_file=local_dir() / "logs" / f"{name}.log",
                env={**os.environ, **overrides},
            )
    if demo and process.read_pid(_pid_file("demo")) is None:
        process.spawn(
            [sys.executable, "-m", "switchboard", "demo"],
            pid_file=_pid_file("demo"),
            log_file=local_dir() / "logs" / "demo.log",
            env=dict(os.environ),
        )
    _wait_ready(settings)
    base = f"http://{settings.http_host}"
    console.print("[bold green]Switchboard is up[/bold green]")
    for name in registry.PROCESSES:
        port = settings.port_of(name)
        console.print(f"  {name:15s} {base}:{port}  (metrics {base}:{port}/metrics, API {base}:{port}/docs)")
    console.print(f"  operator console  {base}:{settings.assigner_port}/console/")
    console.print(f"  admin page        {base}:{settings.assigner_port}/console/admin.html")
    console.print(f"  chat widget       {base}:{settings.delivery_port}/widget/  (the user's side; a second tab)")
    console.print(f"  logs              {local_dir() / 'logs'}")
    console.print("  demo tokens (12 h):")
    for role, sub in (("operator", "op-1"), ("operator", "op-2"), ("admin", "admin"), ("frontend", "web")):
        typer.echo(f"    {role:9s} {sub:6s} {issue_token(settings.auth_secret, sub, role)}")


def _wait_ready(settings, timeout_s: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    pending = set(registry.PROCESSES)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            try:
                r = httpx.get(f"http://{settings.http_host}:{settings.port_of(name)}/readyz", timeout=2)
                if r.status_code == 200:
                    pending.discard(name)
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    if pending:
        console.print(f"[red]not ready after {timeout_s}s: {', '.join(sorted(pending))} (see .local/logs)[/red]")
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop the services, the demo, and the Kafka and Postgres this project started."""
    from deploy.local import process

    names = ("demo", *registry.PROCESSES)
    stopped = set(process.stop_all([_pid_file(name) for name in names]))
    for name in names:
        if _pid_file(name) in stopped:
            console.print(f"{name} stopped")
    infra_down()


@app.command()
def status() -> None:
    """Show which local processes run and whether each service is ready."""
    import httpx

    from deploy.local import kafka, process

    settings = _settings()
    console.print(f"kafka pid: {process.read_pid(kafka.layout().pid_file)}")
    for name in registry.PROCESSES:
        try:
            code = httpx.get(f"http://{settings.http_host}:{settings.port_of(name)}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            code = "down"
        console.print(f"{name:15s} pid {process.read_pid(_pid_file(name))}  readyz {code}")


@app.command()
def demo(
    rate: float = typer.Option(0.5, help="New user messages per second."),
    operators: int = typer.Option(3, help="Simulated operators."),
    duration: float = typer.Option(0, help="Seconds to run; 0 runs until stopped."),
    ingest_url: str | None = typer.Option(None, help="Ingest base URL (default: local port)."),
    assigner_url: str | None = typer.Option(None, help="Assigner base URL (default: local port)."),
) -> None:
    """Simulated users and operators against the running services (for the local demo)."""
    from switchboard.demo import run_demo

    run_demo(
        _settings(), rate=rate, operators=operators, duration=duration, ingest_url=ingest_url, assigner_url=assigner_url
    )


@app.command()
def reconcile() -> None:
    """Recount every stats figure from the assigner's records; exit 1 on any difference."""
    from switchboard.reconcile import run_reconcile

    raise typer.Exit(run_reconcile(_settings()))


@app.command("asyncapi")
def asyncapi_command(
    service: list[str] = typer.Option(
        [], "--service", "-s", help="Only this service (repeatable); default: every service, merged."
    ),
    output: str | None = typer.Option(None, "--output", "-o", help="Write the JSON here instead of stdout."),
    html: bool = typer.Option(False, "--html", help="The self-contained HTML page instead of JSON."),
) -> None:
    """The AsyncAPI 3.0 document of the services' Kafka subscribers and publishers (nothing connects)."""
    import json
    from pathlib import Path

    from shared import asyncapi
    from shared.events import ALL_TOPICS

    _dev_env()  # the document holds no secret; building a service's wiring needs settings that load
    settings = _settings()
    names = service or list(registry.NAMES)
    unknown = [n for n in names if n not in registry.NAMES]
    if unknown:
        console.print(f"[red]unknown service {', '.join(unknown)}; choose from {', '.join(registry.NAMES)}[/red]")
        raise typer.Exit(2)
    docs = asyncapi.documents(settings, {name: registry.broker_factory(name) for name in names})
    for name, doc in docs.items():
        if not doc["operations"]:
            console.print(f"[yellow]{name} declares no Kafka subscriber or publisher[/yellow]")
    whole = (
        docs[names[0]]
        if len(names) == 1
        else asyncapi.merge(docs.values(), description=asyncapi.system_description(settings))
    )
    missing = [t for t in ALL_TOPICS if t not in {c["address"] for c in whole["channels"].values()}]
    if missing and not service:
        console.print(f"[yellow]no service declares {', '.join(missing)}[/yellow]")
    text = asyncapi.render_html(whole, json_url=None) if html else json.dumps(whole, indent=2) + "\n"
    if output:
        Path(output).write_text(text)
        console.print(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


stats_app = typer.Typer(help="Statistics maintenance.", no_args_is_help=True)
app.add_typer(stats_app, name="stats")


@stats_app.command("rebuild")
def stats_rebuild() -> None:
    """Replay chat.lifecycle from the earliest offset into fresh tables; compare with the live figures."""
    from switchboard.reconcile import run_rebuild

    raise typer.Exit(run_rebuild(_settings()))


@app.command("bench-ingest")
def bench_ingest(
    messages: int = typer.Option(5000, help="Messages to send in all."),
    concurrency: int = typer.Option(32, help="Requests in flight."),
    batch: int = typer.Option(0, help="Use the batch endpoint with this many messages a call (0: single)."),
    url: str | None = typer.Option(None, help="Ingest base URL; default: start ingest in-process."),
) -> None:
    """Measure ingest's accepted messages per second and accept latency (p50/p99)."""
    from switchboard.bench.ingest import main as bench_main

    bench_main(_settings(), messages=messages, concurrency=concurrency, batch=batch, url=url)


@app.command("bench-streams")
def bench_streams(
    streams: int = typer.Option(5000, help="Idle chat streams to open and hold."),
    hold_s: float = typer.Option(60.0, help="Seconds to hold them (heartbeats every 15 s)."),
    concurrency: int = typer.Option(50, help="Streams being opened at once."),
    url: str | None = typer.Option(None, help="Delivery base URL on loopback; default: start one."),
    output: str | None = typer.Option(None, help="Also write the figures to this JSON file."),
) -> None:
    """Hold idle chat streams on one delivery instance: its peak RSS and CPU (docs/performance.md)."""
    from switchboard.bench.idle_streams import main as streams_main

    _dev_env()
    streams_main(_settings(), streams=streams, hold_s=hold_s, concurrency=concurrency, url=url, output=output)


@app.command()
def bench(
    users: int | None = typer.Option(None, help="Simulated users (default 200)."),
    http_users: int | None = typer.Option(None, help="Users writing through ingest HTTP (default 16)."),
    operators: int | None = typer.Option(None, help="Simulated operators (default 40)."),
    user_think_ms: float | None = typer.Option(None, help="Pause between a user's messages (default 0)."),
    operator_think_ms: float | None = typer.Option(None, help="Pause before replying (default 20)."),
    warmup_s: float | None = typer.Option(None, help="Warm-up seconds (default 10)."),
    duration_s: float | None = typer.Option(None, help="Measured seconds at max load (default 60)."),
    half_duration_s: float | None = typer.Option(None, help="Measured seconds at half load (default 30)."),
    half_rate: float | None = typer.Option(
        None,
        help="User messages/s of the half phase (default: half of what max applied), to compare two codes at one rate.",
    ),
    direct_kafka: bool | None = typer.Option(
        None, "--direct-kafka/--no-direct-kafka", help="Most users produce straight to chat.inbound (default on)."
    ),
    reply_via: str | None = typer.Option(None, help="Operators reply via 'ingest' or 'kafka'."),
    pgbench: bool | None = typer.Option(None, "--pgbench/--no-pgbench", help="Run pgbench side by side."),
    scale_check: bool | None = typer.Option(
        None, "--scale-check/--no-scale-check", help="Pull latency with 1K/100K/1M waiting chats."
    ),
    scale_sizes: str | None = typer.Option(None, help="Comma-separated queue sizes for the scale check."),
    scale_operators: int | None = typer.Option(None, help="Concurrent pullers in the scale check (default 200)."),
    scale_duration_s: float | None = typer.Option(None, help="Measured seconds per scale-check size (default 15)."),
    scale_think_ms: float | None = typer.Option(
        None, help="Scale check: pause between release and next pull (default 1000)."
    ),
    scale_routed: bool | None = typer.Option(
        None,
        "--scale-routed/--no-scale-routed",
        help="Scale check over 20 queues and 8 skill sets, pullers with mixed profiles (issue #16).",
    ),
    release_share: float | None = typer.Option(
        None, help="Share of pulled chats released instead of answered (default 0.1)."
    ),
    messages_per_chat: int | None = typer.Option(
        None, help="A user opens a new chat after this many messages (default 6)."
    ),
    backlog_cap: int | None = typer.Option(
        None, help="Users wait while this many inbound events are unapplied (default 1500)."
    ),
    push_streams: int | None = typer.Option(
        None, help="Chat streams opened at half load to time operator replies (default 100, 0: none)."
    ),
    drain_timeout_s: float | None = typer.Option(None, help="Bound on each drain (default 90)."),
    conversation_users: int | None = typer.Option(None, help="Conversation phase: users, all HTTP (default 200)."),
    conversation_operators: int | None = typer.Option(None, help="Conversation phase: operators (default 100)."),
    conversation_warmup_s: float | None = typer.Option(None, help="Conversation phase: warm-up seconds (default 5)."),
    conversation_duration_s: float | None = typer.Option(
        None, help="Conversation phase: measured seconds (default 30, 0 skips it)."
    ),
    messages_per_turn: int | None = typer.Option(
        None, help="Conversation phase: user messages before waiting for the reply (default 3)."
    ),
    turns_per_chat: int | None = typer.Option(None, help="Conversation phase: turns before a new chat (default 5)."),
    only_conversation: bool | None = typer.Option(
        None, "--only-conversation/--all-phases", help="Only pgbench, the SQL peer and the conversation phase."
    ),
    sql_peer: bool | None = typer.Option(
        None, "--sql-peer/--no-sql-peer", help="Run the SQL reference peer (pgbench -f turn.pgbench)."
    ),
    sql_peer_seconds: int | None = typer.Option(None, help="SQL reference peer duration (default 20)."),
    pgbench_seconds: int | None = typer.Option(None, help="pgbench duration (default 15)."),
    pgbench_clients: int | None = typer.Option(None, help="pgbench clients (default 8)."),
    pgbench_threads: int | None = typer.Option(None, help="pgbench threads (default 2)."),
    database: str | None = typer.Option(None, help="The bench's own database, recreated (default switchboard_bench)."),
    partitions: int | None = typer.Option(None, help="Partitions of the bench topics (default 6)."),
    profile: bool | None = typer.Option(None, "--profile/--no-profile", help="py-spy the services."),
    output: str | None = typer.Option(None, help="JSON report path."),
    plot: str | None = typer.Option(None, help="PNG plot path."),
    ingest_url: str | None = typer.Option(None, help="Use a running stack: ingest URL."),
    assigner_url: str | None = typer.Option(None, help="Use a running stack: assigner URL."),
    stats_url: str | None = typer.Option(None, help="Use a running stack: stats URL."),
    delivery_url: str | None = typer.Option(None, help="Use a running stack: delivery URL (push latency)."),
    keep: bool | None = typer.Option(None, "--keep/--no-keep", help="Keep the bench database and topics."),
    smoke: bool | None = typer.Option(None, "--smoke/--no-smoke", help="A few seconds with tiny numbers."),
) -> None:
    """End-to-end benchmark: conversation turns, throughput, apply/pull latency, pgbench and the SQL peer side by
    side, scale check (docs/performance.md)."""
    from switchboard.bench import main as bench_main

    options = {k: v for k, v in locals().items() if v is not None and k != "bench_main"}
    _dev_env()
    raise typer.Exit(bench_main(_settings(), **options))
