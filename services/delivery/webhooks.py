"""Webhook sending (Standard Webhooks): claim due deliveries, sign, POST, record the outcome.

At least once, in order per chat per endpoint: a delivery is sent only while it is the oldest
pending one of its chat for its endpoint, and it stays pending until a 2xx. Each claim takes a
lease (the request timeout twice, plus 5 s) under FOR UPDATE SKIP LOCKED, so two instances never
send the same delivery at once; an instance that dies mid-send leaves the lease to expire and
another sends it again. No redirects are followed (a 3xx is a failed attempt): a webhook goes
only to the URL an admin registered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
import time
import uuid
from collections.abc import Sequence

import asyncpg
import httpx
from prometheus_client import Counter, Gauge, Histogram
from standardwebhooks import Webhook

from services.delivery import domain
from services.delivery.store import QUERIES
from shared.events import utcnow
from shared.settings import Settings

log = logging.getLogger("switchboard.delivery.webhooks")

WEBHOOK_DELIVERIES = Counter(
    "switchboard_delivery_webhook_attempts_total",
    "Webhook requests sent, by outcome (delivered, rejected: non-2xx, error: no answer).",
    ["outcome"],
)
WEBHOOK_BACKLOG = Gauge("switchboard_delivery_webhook_backlog", "Webhook deliveries not yet delivered (all endpoints).")
WEBHOOK_OLDEST = Gauge(
    "switchboard_delivery_webhook_oldest_pending_seconds", "Age of the oldest webhook delivery not yet delivered."
)
WEBHOOK_DISABLED = Counter(
    "switchboard_delivery_webhook_endpoints_disabled_total",
    "Endpoints disabled after failing for SWITCHBOARD_DELIVERY_WEBHOOK_DISABLE_AFTER_S.",
)
WEBHOOK_LATENCY = Histogram(
    "switchboard_delivery_webhook_request_seconds",
    "Duration of one webhook request.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
for _outcome in ("delivered", "rejected", "error"):
    WEBHOOK_DELIVERIES.labels(_outcome)


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form (`whsec_` + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def usable_secret(secret: str) -> bool:
    """True when the Standard Webhooks library accepts the secret (`whsec_` + base64, at least 16 bytes)."""
    try:
        raw = secret.removeprefix("whsec_")
        return len(base64.b64decode(raw + "==", validate=False)) >= 16 and Webhook(secret) is not None
    except Exception:
        return False


def signed_headers(secret: str, msg_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one request body."""
    now = utcnow()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
        "user-agent": "Switchboard-Webhooks/1",
    }


async def enqueue(conn: asyncpg.Connection, facts: Sequence) -> None:
    """Queue a batch's facts for every endpoint that wants them, in the consumer's transaction."""
    if not facts:
        return
    await conn.execute(
        QUERIES.enqueue_webhook_deliveries,
        [f.chat_id for f in facts],
        [f.event_id for f in facts],
        [f.type for f in facts],
        [f.model_dump_json() for f in facts],
    )


class Sender:
    """One instance's webhook loop."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool):
        self.settings = settings
        self.pool = pool
        self.lease_s = settings.delivery_webhook_timeout_s * 2 + 5
        self._rng = random.Random()

    async def run(self) -> None:
        """Claim and send until cancelled."""
        s = self.settings
        timeout = httpx.Timeout(s.delivery_webhook_timeout_s)
        gauges_at = 0.0
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            while True:
                claimed = await self.round(client)
                if time.monotonic() - gauges_at > 2:
                    gauges_at = time.monotonic()
                    await self._export_backlog()
                if not claimed:
                    await asyncio.sleep(s.delivery_webhook_poll_interval_s)

    async def round(self, client: httpx.AsyncClient) -> int:
        """Claim what is due and send it, concurrently; returns how many were sent."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                QUERIES.claim_webhook_deliveries, self.settings.delivery_webhook_concurrency, self.lease_s
            )
        await asyncio.gather(*(self._send(client, row) for row in rows))
        return len(rows)

    async def _send(self, client: httpx.AsyncClient, row: asyncpg.Record) -> None:
        s = self.settings
        headers = signed_headers(row["secret"], str(row["event_id"]), row["payload"])
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await client.post(row["url"], content=row["payload"].encode(), headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
            # A URL httpx cannot use is an attempt that failed, retried with backoff like the others.
            error = f"{type(exc).__name__}: {exc}"[:500]
        WEBHOOK_LATENCY.observe(time.perf_counter() - started)
        outcome = domain.webhook_outcome(status)
        WEBHOOK_DELIVERIES.labels(outcome).inc()
        async with self.pool.acquire() as conn:
            if outcome == "delivered":
                await conn.execute(QUERIES.mark_webhook_delivered, row["id"], status)
                return
            delay = domain.retry_delay(
                row["attempts"], s.delivery_webhook_backoff_base_s, s.delivery_webhook_backoff_max_s, self._rng.random()
            )
            disabled = await conn.fetchval(
                QUERIES.mark_webhook_failed, row["id"], delay, status, error, s.delivery_webhook_disable_after_s
            )
        if disabled:
            WEBHOOK_DISABLED.inc()
            log.warning("webhook endpoint disabled", extra={"endpoint": str(row["endpoint_id"]), "error": error})

    async def _export_backlog(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(QUERIES.webhook_backlog)
        except Exception:
            return
        WEBHOOK_BACKLOG.set(row["pending"])
        WEBHOOK_OLDEST.set(row["oldest_s"])


def new_endpoint_id() -> uuid.UUID:
    """A fresh endpoint id."""
    return uuid.uuid4()
