"""Demo traffic: simulated users write through ingest, simulated operators pull, reply, release.

The demo first sets up a few queues and its operators' profiles (mixed teams, skills and one with
capacity 2); users route their new chats across those queues (one in seven to a queue that does
not exist, which falls back to `default`), with some priorities and skills.

Only talks to the local services over HTTP (127.0.0.1); bounded by `duration` when given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid

import httpx

from shared.auth import issue_token
from shared.settings import Settings

log = logging.getLogger("switchboard.demo")

OPENERS = [
    "hey",
    "hi, my order is late",
    "I can't log in",
    "is anyone there?",
    "refund please",
    "the app crashes on start",
    "how do I change my address?",
]
FOLLOW_UPS = ["how are you?", "any news?", "thanks!", "one more thing…", "still broken", "ok great"]
# Routing (docs/contract.md "Routing"): a few teams, skills and priorities, so the demo shows it.
QUEUES = {
    "sales": {"name": "Sales", "priority_step_s": 30, "sla_first_assignment_s": 45},
    "support": {"name": "Support", "sla_first_assignment_s": 90, "skills_relax_after_s": 30},
    "billing": {"name": "Billing", "sla_first_assignment_s": 120, "skills_relax_after_s": 60},
}
ROUTES = ["default", "default", "sales", "support", "support", "billing", "nowhere"]  # "nowhere" falls back
SKILLS = [[], [], ["en"], ["de"], ["en", "refunds"]]
# Operator i gets profile i % len(PROFILES): mixed teams and skills, so every queue has takers.
PROFILES = [
    {"queues": ["default", "support"], "skills": ["en"]},
    {"queues": ["default", "sales", "billing"], "skills": ["en", "de"]},
    {"queues": ["support", "billing"], "skills": ["de", "en", "refunds"], "capacity": 2},
    {"queues": ["default", "sales"], "skills": []},
]
REPLIES = [
    "Hello! Let me check that for you.",
    "Sorry about that — looking into it now.",
    "Could you share your order number?",
    "That should be fixed now.",
    "Happy to help!",
]


class Demo:
    """A small support floor: users open chats and sometimes follow up; operators work the queue."""

    def __init__(
        self,
        settings: Settings,
        rate: float,
        operators: int,
        ingest_url: str | None = None,
        assigner_url: str | None = None,
    ):
        self.settings = settings
        self.rate = rate
        self.operators = operators
        base = f"http://{settings.http_host}"
        self.ingest_url = (ingest_url or f"{base}:{settings.ingest_port}").rstrip("/")
        self.assigner_url = (assigner_url or f"{base}:{settings.assigner_port}").rstrip("/")
        self.frontend = {"Authorization": f"Bearer {issue_token(settings.auth_secret, 'demo-web', 'frontend')}"}
        self.admin = {"Authorization": f"Bearer {issue_token(settings.auth_secret, 'demo-admin', 'admin')}"}
        self.open_chats: list[str] = []
        self.stop_at: float | None = None

    def _running(self) -> bool:
        return self.stop_at is None or time.monotonic() < self.stop_at

    async def configure(self, client: httpx.AsyncClient) -> None:
        """The demo's queues and its operators' profiles (PUTs: the same on every start)."""
        for queue_id, settings in QUEUES.items():
            r = await client.put(f"{self.assigner_url}/v1/admin/queues/{queue_id}", json=settings, headers=self.admin)
            r.raise_for_status()
        for i in range(self.operators):
            operator_id = f"demo-op-{i + 1}"
            profile = {"display_name": f"Demo operator {i + 1}", **PROFILES[i % len(PROFILES)]}
            r = await client.put(
                f"{self.assigner_url}/v1/admin/operators/{operator_id}", json=profile, headers=self.admin
            )
            r.raise_for_status()

    async def say(
        self,
        client: httpx.AsyncClient,
        chat_id: str,
        text: str,
        operator_id: str | None = None,
        routing: dict | None = None,
    ) -> None:
        """Publish one message through ingest as the frontend would."""
        body: dict = {
            "message_id": f"demo-{uuid.uuid4().hex[:12]}",
            "text": text,
            "sender": "operator" if operator_id else "user",
        }
        if operator_id:
            body["operator_id"] = operator_id
        if routing:
            body["routing"] = routing
        url = f"{self.ingest_url}/v1/chats/{chat_id}/messages"
        r = await client.post(url, json=body, headers=self.frontend)
        if r.status_code != 202:
            log.warning("ingest refused a demo message", extra={"status": r.status_code, "body": r.text[:200]})

    async def users(self, client: httpx.AsyncClient) -> None:
        """New chats at `rate` per second; some existing chats get a follow-up."""
        while self._running():
            if self.open_chats and random.random() < 0.3:
                await self.say(client, random.choice(self.open_chats), random.choice(FOLLOW_UPS))
            else:
                chat_id = f"demo-{uuid.uuid4().hex[:8]}"
                self.open_chats = (self.open_chats + [chat_id])[-200:]
                routing = {
                    "queue": random.choice(ROUTES),
                    "priority": random.choice([0, 0, 0, 2, 5]),
                    "skills": random.choice(SKILLS),
                }
                await self.say(client, chat_id, random.choice(OPENERS), routing=routing)
            await asyncio.sleep(random.expovariate(self.rate))

    async def operator(self, client: httpx.AsyncClient, operator_id: str) -> None:
        """Pull, think, then reply (usually), release (sometimes) or go silent (rarely)."""
        headers = {"Authorization": f"Bearer {issue_token(self.settings.auth_secret, operator_id, 'operator')}"}
        url = self.assigner_url
        while self._running():
            r = await client.post(f"{url}/v1/assignments/next", headers=headers)
            if r.status_code != 200:
                await asyncio.sleep(1.0)
                continue
            a = r.json()
            await asyncio.sleep(random.uniform(1.0, 4.0))
            roll = random.random()
            if roll < 0.8:
                await self.say(client, a["chat"]["chat_id"], random.choice(REPLIES), operator_id)
                await self._until_answered(client, url, headers, a["assignment_id"])
            elif roll < 0.9:
                await client.post(f"{url}/v1/assignments/{a['assignment_id']}/release", headers=headers)
            elif roll < 0.95:
                await client.post(f"{url}/v1/assignments/{a['assignment_id']}/complete", headers=headers)
            else:
                await asyncio.sleep(random.uniform(5, 15))  # a silent operator; the idle monitor may step in

    async def _until_answered(self, client, url, headers, assignment_id) -> None:
        # The reply travels ingest -> Kafka -> assigner; pulling before it lands would return the
        # same assignment (retry-safe pull) and the operator would answer twice.
        for _ in range(50):
            r = await client.get(f"{url}/v1/assignments/current", headers=headers)
            if r.status_code != 200 or r.json()["assignment_id"] != assignment_id:
                return
            await asyncio.sleep(0.2)

    async def run(self, duration: float) -> None:
        """Run users and operators until `duration` seconds have passed (0: until cancelled)."""
        if duration:
            self.stop_at = time.monotonic() + duration
        async with httpx.AsyncClient(timeout=10) as client:
            await self._resilient(lambda: self.configure(client))
            loops = [lambda: self.users(client)] + [
                (lambda op=f"demo-op-{i + 1}": self.operator(client, op)) for i in range(self.operators)
            ]
            await asyncio.gather(*(self._resilient(make) for make in loops))

    async def _resilient(self, make_loop) -> None:
        # A service restarting must not end the demo: wait and start the loop again.
        while self._running():
            try:
                await make_loop()
                return
            except httpx.HTTPError as exc:  # HTTPStatusError too: a service still starting
                log.warning("demo request failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)


def run_demo(
    settings: Settings,
    *,
    rate: float,
    operators: int,
    duration: float,
    ingest_url: str | None = None,
    assigner_url: str | None = None,
) -> None:
    """Entry point of `switchboard demo`."""
    from shared import logs

    logs.configure("demo", settings.log_level)
    asyncio.run(Demo(settings, rate, operators, ingest_url, assigner_url).run(duration))
