"""`switchboard bench-streams`: how much one delivery instance spends holding idle chat streams.

Starts its own delivery (a subprocess on a free loopback port, throwaway database and topic prefix,
removed afterwards) or uses `--url`. Mints a chat token per chat through `POST /v1/chats/{id}/token`,
measures the service's idle CPU for 10 s, opens `--streams` chat streams (SSE) with them, `--concurrency` at a time, holds them idle for
`--hold-s` seconds while the service sends its heartbeats, then closes them. Reports the service
process's resident memory (before, sampled each second while held, and its peak, VmHWM) and its
CPU while the streams are held, read with psutil as the full bench does; and the file-descriptor
limits of both processes, since every stream is a socket on each side.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from shared.auth import issue_token
from shared.settings import Settings
from switchboard.bench.client import Conn, HttpError, http_get
from switchboard.bench.metrics import metric_sum, parse_metrics
from switchboard.bench.sse import SseStream
from switchboard.bench.tasks import cancel_and_wait

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_STREAMS = 20_000
MAX_HOLD_S = 600.0
FD_MARGIN = 256  # descriptors beyond one per stream: the process's own files, pools, Kafka
OPEN_STREAMS = "switchboard_delivery_open_streams"
BASELINE_S = 10.0  # the service's CPU with no stream, measured before opening them


@dataclass
class Held:
    """The streams of one run and what they saw."""

    streams: list[SseStream] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    ended_early: int = 0


def fd_budget(streams: int, soft: int, hard: int) -> tuple[int, str | None]:
    """The soft limit to set for `streams` sockets (raised up to the hard limit), or why it cannot be."""
    need = streams + FD_MARGIN
    if soft >= need:
        return soft, None
    if hard != resource.RLIM_INFINITY and hard < need:
        return soft, f"{streams} streams need {need} file descriptors; the hard limit is {hard} (ulimit -Hn)"
    return need, None


def raise_fd_limit(streams: int) -> dict:
    """Raise this process's soft RLIMIT_NOFILE for the streams (the service it starts inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted, problem = fd_budget(streams, soft, hard)
    if problem:
        raise SystemExit(problem)
    if wanted != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return {"soft_before": soft, "soft": wanted, "hard": hard}


def main(
    settings: Settings, *, streams: int, hold_s: float, concurrency: int, url: str | None, output: str | None
) -> dict:
    """Run the job (bounded in streams, time and to loopback); print and return its figures."""
    if not 1 <= streams <= MAX_STREAMS:
        raise SystemExit(f"--streams must be 1..{MAX_STREAMS}")
    if not 0 < hold_s <= MAX_HOLD_S:
        raise SystemExit(f"--hold-s must be in (0, {MAX_HOLD_S:.0f}]")
    if not 1 <= concurrency <= 500:
        raise SystemExit("--concurrency must be 1..500")
    if url is not None and urlparse(url).hostname not in LOOPBACK:
        raise SystemExit("bench-streams only opens streams to a loopback address (127.0.0.1)")
    limits = raise_fd_limit(streams)
    report = asyncio.run(_run(settings, streams, hold_s, concurrency, url))
    report["fd_limit_bench"] = limits
    print(json.dumps(report, indent=2))
    if output:
        with open(output, "w") as f:
            json.dump(report, f, indent=2)
    return report


async def _run(settings: Settings, streams: int, hold_s: float, concurrency: int, url: str | None) -> dict:
    from switchboard.bench.resources import listener_pid
    from switchboard.bench.stack import OwnService

    if url is not None:
        pid = await asyncio.to_thread(listener_pid, urlparse(url).port or 80)
        if pid is None:
            raise SystemExit(f"no local process listens on {url}: its memory and CPU cannot be read")
        return await _measure(url.rstrip("/"), pid, settings.auth_secret, streams, hold_s, concurrency)
    own = OwnService(settings, "delivery")
    async with own as base:
        return await _measure(base, own.pid, settings.auth_secret, streams, hold_s, concurrency)


async def _open_streams(base: str, secret: str, streams: int, concurrency: int) -> Held:
    """Mint a token and open a stream per chat, `concurrency` at a time; each stream is read by a task."""
    held = Held()
    frontend = issue_token(secret, "bench-streams", "frontend", ttl_s=3600)
    run = f"idle{int(time.time())}"
    chats = iter(range(streams))

    async def reader(stream: SseStream) -> None:
        async for _ in stream.events():
            pass  # an idle chat has no events; heartbeats are counted by the parser
        held.ended_early += 1

    async def opener() -> None:
        conn = Conn(base)
        try:
            for n in chats:
                chat_id = f"{run}-c{n}"
                try:
                    status, body = await conn.request("POST", f"/v1/chats/{chat_id}/token", frontend)
                    if status != 200:
                        raise HttpError(f"chat token answered {status}")
                    stream = SseStream(base, f"/v1/chats/{chat_id}/stream", json.loads(body)["token"])
                    await stream.open()
                except HttpError as exc:
                    key = str(exc)[:60]
                    held.failed[key] = held.failed.get(key, 0) + 1
                    continue
                held.streams.append(stream)
                held.tasks.append(asyncio.create_task(reader(stream)))
        finally:
            await conn.close()

    await asyncio.gather(*(opener() for _ in range(concurrency)))
    return held


async def _open_count(base: str) -> float | None:
    try:
        status, data = await http_get(base, "/metrics", timeout=10)
    except HttpError:
        return None
    if status != 200:
        return None
    return metric_sum(parse_metrics(data.decode(), (OPEN_STREAMS,)), OPEN_STREAMS, stream="chat")


async def _measure(base: str, pid: int, secret: str, streams: int, hold_s: float, concurrency: int) -> dict:
    import psutil

    from switchboard.bench.resources import cpu_seconds, peak_rss_kb

    service = psutil.Process(pid)
    me = psutil.Process()
    # The service's own idle cost first (its consumer polls, its webhook sender, its listener).
    base0, b0 = cpu_seconds(service), time.monotonic()
    await asyncio.sleep(BASELINE_S)
    baseline_cores = (cpu_seconds(service) - base0) / (time.monotonic() - b0)
    rss_before = service.memory_info().rss
    t0 = time.monotonic()
    held = await _open_streams(base, secret, streams, concurrency)
    opening_s = time.monotonic() - t0
    open_by_service = await _open_count(base)
    beats0 = [s.parser.comments for s in held.streams]
    cpu0, mine0, w0 = cpu_seconds(service), cpu_seconds(me), time.monotonic()
    rss_max = 0
    while (left := hold_s - (time.monotonic() - w0)) > 0:
        rss_max = max(rss_max, service.memory_info().rss)
        await asyncio.sleep(min(1.0, left))
    held_s = time.monotonic() - w0
    cpu1, mine1 = cpu_seconds(service), cpu_seconds(me)
    rss_end = service.memory_info().rss
    peak_kb = peak_rss_kb(pid)
    still_open = len(held.streams) - held.ended_early
    heartbeats = [s.parser.comments - before for s, before in zip(held.streams, beats0, strict=True)]
    t1 = time.monotonic()
    await cancel_and_wait(*held.tasks)
    await asyncio.gather(*(s.close() for s in held.streams))
    closing_s = time.monotonic() - t1
    # The service notices each closed connection on its own: wait (bounded) until it holds none.
    while (open_after_close := await _open_count(base)) and time.monotonic() - t1 < 60:
        await asyncio.sleep(0.5)
    released_s = time.monotonic() - t1
    limits = service.rlimit(psutil.RLIMIT_NOFILE)
    mb = 1024 * 1024
    return {
        "streams_wanted": streams,
        "streams_opened": len(held.streams),
        "streams_failed": held.failed,
        "streams_open_at_end_of_hold": still_open,
        "service_open_streams_gauge": {"held": open_by_service, "after_close": open_after_close},
        "opening_s": round(opening_s, 1),
        "hold_s": round(held_s, 1),
        "closing_s": round(closing_s, 1),
        "service_released_all_s": round(released_s, 1),
        "heartbeats_per_stream_while_held": {
            "min": min(heartbeats, default=None),
            "max": max(heartbeats, default=None),
            "total": sum(heartbeats),
        },
        "service": {
            "pid": pid,
            "rss_mb_before": round(rss_before / mb, 1),
            "rss_mb_max_while_held": round(rss_max / mb, 1),
            "rss_mb_end_of_hold": round(rss_end / mb, 1),
            "peak_rss_mb": None if peak_kb is None else round(peak_kb / 1024, 1),
            "rss_kb_per_stream": round((rss_end - rss_before) / 1024 / max(1, len(held.streams)), 1),
            "cpu_cores_idle_before": round(baseline_cores, 4),
            "cpu_cores_while_held": round((cpu1 - cpu0) / held_s, 4),
            "fd_limit": {"soft": limits[0], "hard": limits[1]},
        },
        "bench_client_cpu_cores_while_held": round((mine1 - mine0) / held_s, 4),
    }
