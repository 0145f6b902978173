"""`switchboard bench-ingest`: accepted messages per second and accept latency of ingest, on loopback only.

Without `--url` it starts its own ingest (a subprocess on a free loopback port) against the
configured Kafka and Postgres, with a throwaway database and topic prefix that it removes
afterwards, so a running Switchboard never sees the benchmark's messages.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from shared.auth import issue_token
from shared.settings import Settings
from switchboard.bench.stack import OwnService

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_MESSAGES = 200_000
MAX_CONCURRENCY = 256
MAX_SECONDS = 300.0
CHATS = 200
WARMUP = 50


@dataclass
class Result:
    """What one run measured."""

    mode: str
    accepted: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def percentile(self, q: float) -> float:
        """The q-quantile (0..1) of the request latencies, in seconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def report(self) -> str:
        """A short human-readable summary."""
        rate = self.accepted / self.elapsed if self.elapsed else 0.0
        unit = "request" if self.mode == "single" else "batch call"
        lines = [
            f"mode               {self.mode}",
            f"accepted messages  {self.accepted} in {self.elapsed:.2f} s",
            f"throughput         {rate:,.0f} accepted msgs/s",
            f"accept latency     p50 {self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms"
            f" (per {unit}, {len(self.latencies)} {unit}s)",
        ]
        if self.failed:
            lines.append(f"failed             {dict(sorted(self.failed.items()))} (HTTP status: count)")
        return "\n".join(lines)


def main(settings: Settings, *, messages: int, concurrency: int, batch: int, url: str | None) -> Result:
    """Run the benchmark (bounded in count, time and to loopback) and print its figures."""
    if not 1 <= messages <= MAX_MESSAGES:
        raise SystemExit(f"--messages must be 1..{MAX_MESSAGES}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise SystemExit(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 0 <= batch <= 500:
        raise SystemExit("--batch must be 0 (single messages) or 1..500")
    if url is not None and urlparse(url).hostname not in LOOPBACK:
        raise SystemExit("bench-ingest only sends load to a loopback address (127.0.0.1)")
    result = asyncio.run(_run(settings, messages=messages, concurrency=concurrency, batch=batch, url=url))
    print(result.report())
    return result


async def _run(settings: Settings, *, messages: int, concurrency: int, batch: int, url: str | None) -> Result:
    if url is not None:
        return await _load(url.rstrip("/"), settings.auth_secret, messages, concurrency, batch)
    async with OwnService(settings, "ingest") as base:
        return await _load(base, settings.auth_secret, messages, concurrency, batch)


async def _load(base: str, secret: str, messages: int, concurrency: int, batch: int) -> Result:
    headers = {"Authorization": f"Bearer {issue_token(secret, 'bench', 'frontend', ttl_s=3600)}"}
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = Result(mode="single" if batch == 0 else f"batch of {batch}")
    per_call = max(1, batch)
    calls = math.ceil(messages / per_call)
    counter = iter(range(calls))
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:
        for i in range(min(WARMUP, calls)):  # connections and caches warm, not measured
            await client.post(
                f"/v1/chats/bench-{run}-warm/messages",
                json={"message_id": f"w{i}", "sender": "user", "text": "warm-up"},
            )
        deadline = time.monotonic() + MAX_SECONDS

        async def worker() -> None:
            for n in counter:
                if time.monotonic() > deadline:
                    return
                first = n * per_call
                count = min(per_call, messages - first)
                if batch == 0:
                    path = f"/v1/chats/bench-{run}-c{n % CHATS}/messages"
                    body = {"message_id": f"m{n}", "sender": "user", "text": f"benchmark message {n}"}
                else:
                    path = "/v1/messages:batch"
                    body = {
                        "messages": [
                            {
                                "chat_id": f"bench-{run}-c{i % CHATS}",
                                "message_id": f"m{i}",
                                "sender": "user",
                                "text": f"benchmark message {i}",
                            }
                            for i in range(first, first + count)
                        ]
                    }
                started = time.perf_counter()
                r = await client.post(path, json=body)
                result.latencies.append(time.perf_counter() - started)
                if r.status_code in (200, 202):
                    result.accepted += count if batch else 1
                else:
                    result.failed[r.status_code] = result.failed.get(r.status_code, 0) + count

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
        result.elapsed = time.perf_counter() - started
    return result
