"""Identity and roles, against the four services running as real processes.

An operator can never act on another operator's assignment or read another's figures. Services
refuse the development secret unless in development mode. Tokens and the secret never reach the
logs. (Every route refusing missing, malformed, forged and expired tokens and the roles it does not
admit needs no process: tests/unit/test_auth_routes.py, whose tables this file shares.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from shared.auth import issue_token
from shared.settings import DEV_SECRET
from tests import harness
from tests.conftest import BASE_URL, BOOTSTRAP
from tests.e2e.procs import Fleet, ServiceProcess, service_env
from tests.unit.test_auth_routes import BODIES, PUBLIC_PREFIXES, ROLES, SERVICES, bad_credentials, path_of

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
async def fleet(infra, template_db, tmp_path_factory):
    """The four services as processes on a fresh database and topics, logging at DEBUG."""
    env = await harness.make_env(BASE_URL, template_db, BOOTSTRAP)
    log_dir = tmp_path_factory.mktemp("security-logs")
    proc_env = service_env(env.settings, SWITCHBOARD_LOG_LEVEL="DEBUG")
    try:
        async with Fleet(env.settings, log_dir, SERVICES, env=proc_env) as running:
            running.env = env
            yield running
    finally:
        await harness.drop_database(BASE_URL, urlparse(env.database_url).path.lstrip("/"))
        await harness.delete_topics(BOOTSTRAP, env.settings.topic_prefix)


async def routes(client: httpx.AsyncClient, fleet: Fleet) -> list[tuple[str, str, str]]:
    """(service, method, path template) of every non-public operation in the OpenAPI documents."""
    found = []
    for name in SERVICES:
        doc = (await client.get(f"{fleet[name].url}/openapi.json")).json()
        for path, ops in doc["paths"].items():
            if path.startswith(PUBLIC_PREFIXES):
                continue
            for method in ops:
                if method in ("get", "post", "put", "patch", "delete"):
                    found.append((name, method.upper(), path))
    return found


async def call(
    client: httpx.AsyncClient, fleet: Fleet, route: tuple[str, str, str], headers: dict, content: bytes | None = None
) -> httpx.Response:
    name, method, path = route
    url = fleet[name].url + path_of(path)
    if content is None and path in BODIES:
        return await client.request(method, url, headers=headers, json=BODIES[path])
    return await client.request(method, url, headers={**headers, "Content-Type": "application/json"}, content=content)


async def test_an_operator_cannot_read_release_or_complete_another_operators_chat_nor_read_their_figures(fleet):
    alice, bob = harness.token("op-alice"), harness.token("op-bob")
    frontend, admin = harness.token("web", "frontend"), harness.token("admin-1", "admin")
    chat = f"c-{uuid.uuid4().hex[:8]}"
    ingest, assigner, stats = fleet["ingest"].url, fleet["assigner"].url, fleet["stats"].url
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{ingest}/v1/chats/{chat}/messages",
            headers=frontend,
            json={"message_id": "m-1", "sender": "user", "text": "help"},
        )
        assert r.status_code == 202, r.text

        async def pulled():
            r = await client.post(f"{assigner}/v1/assignments/next", headers=alice)
            return r.json() if r.status_code == 200 else None

        mine = await harness.eventually(pulled, timeout=30, interval=0.2)
        assert mine["chat"]["chat_id"] == chat
        assignment = mine["assignment_id"]

        assert (await client.get(f"{assigner}/v1/chats/{chat}", headers=bob)).status_code == 403
        assert (await client.post(f"{assigner}/v1/assignments/{assignment}/release", headers=bob)).status_code == 403
        assert (await client.post(f"{assigner}/v1/assignments/{assignment}/complete", headers=bob)).status_code == 403
        assert (await client.get(f"{assigner}/v1/assignments/current", headers=bob)).status_code == 204
        # Bob may not speak as Alice through ingest with his own operator token.
        r = await client.post(
            f"{ingest}/v1/chats/{chat}/messages",
            headers=bob,
            json={"message_id": "m-2", "sender": "operator", "operator_id": "op-alice", "text": "it is me, alice"},
        )
        assert r.status_code == 403, r.text
        r = await client.post(
            f"{ingest}/v1/chats/{chat}/messages",
            headers=bob,
            json={"message_id": "m-3", "sender": "user", "text": "i am the user"},
        )
        assert r.status_code == 403, r.text
        assert (await client.get(f"{stats}/v1/operators/op-alice/stats", headers=bob)).status_code == 403
        assert (await client.get(f"{stats}/v1/operators/op-bob/stats", headers=bob)).status_code == 200
        assert (await client.get(f"{stats}/v1/operators/op-alice/stats", headers=admin)).status_code == 200

        current = await client.get(f"{assigner}/v1/assignments/current", headers=alice)
        assert current.status_code == 200 and current.json()["assignment_id"] == assignment
        view = (await client.get(f"{assigner}/v1/chats/{chat}", headers=admin)).json()
        assert view["state"] == "assigned" and view["assigned_operator_id"] == "op-alice"
        assert view["message_count"] == 1
        assert (await client.get(f"{assigner}/v1/chats/{chat}", headers=alice)).status_code == 200


async def test_no_service_starts_with_the_development_secret_or_a_short_one_unless_in_development_mode(fleet, tmp_path):
    settings = fleet.env.settings

    def spawn(name: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(name, settings, tmp_path, env=service_env(settings, **env))
        proc.start()
        return proc

    refused = [spawn(n, SWITCHBOARD_AUTH_SECRET=DEV_SECRET, SWITCHBOARD_DEV_MODE="0") for n in SERVICES]
    refused += [spawn(n, SWITCHBOARD_AUTH_SECRET="too-short") for n in SERVICES]
    try:
        deadline = time.monotonic() + 60
        while any(p.alive() for p in refused) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for p in refused:
            assert not p.alive(), f"{p.name} kept running: {p.log_tail()}"
            assert p.proc.returncode != 0
            assert "SWITCHBOARD_AUTH_SECRET" in p.log_text(), p.log_tail()
            assert DEV_SECRET not in p.log_text()
        dev = spawn("assigner", SWITCHBOARD_AUTH_SECRET=DEV_SECRET, SWITCHBOARD_DEV_MODE="1")
        refused.append(dev)
        await dev.wait_ready(60)
    finally:
        for p in refused:
            p.kill()


async def test_tokens_and_the_secret_never_appear_in_any_log(fleet):
    tokens = [issue_token(harness.TEST_SECRET, f"{role}-log", role) for role in ROLES]
    forged = [
        h["Authorization"].split(" ", 1)[1]
        for h in bad_credentials().values()
        if h.get("Authorization", "").startswith("Bearer ") and len(h["Authorization"]) > 20
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for route in await routes(client, fleet):
            for tok in tokens + forged:
                await call(client, fleet, route, {"Authorization": f"Bearer {tok}"})
                await call(client, fleet, route, {"Authorization": f"Bearer {tok}"}, content=b"{broken")
        # Make the services talk: a message flows through ingest, the assigner and stats.
        r = await client.post(
            f"{fleet['ingest'].url}/v1/chats/c-log/messages",
            headers={"Authorization": f"Bearer {tokens[0]}"},
            json={"message_id": "m-log", "sender": "user", "text": "log me"},
        )
        assert r.status_code == 202, r.text
    await asyncio.sleep(1.0)
    for name in SERVICES:
        text = fleet[name].log_text()
        assert text.strip(), f"{name} wrote no log at all"
        assert harness.TEST_SECRET not in text, f"{name} logged the secret"
        for tok in tokens + forged:
            assert tok not in text, f"{name} logged a bearer token"
            signature = tok.split(".")[-1]
            assert len(signature) < 16 or signature not in text, f"{name} logged a token's signature"
