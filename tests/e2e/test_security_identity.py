"""Identity and roles, against the four services running as real processes.

Every route of every service's OpenAPI document is called with no token, malformed and forged
tokens, an expired token, and each role it does not admit: 401 or 403 every time. An operator
can never act on another operator's assignment or read another's figures. Services refuse the
development secret unless in development mode. Tokens and the secret never reach the logs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlparse

import httpx
import jwt
import pytest

from shared.auth import issue_token
from shared.settings import DEV_SECRET
from tests import harness
from tests.conftest import BASE_URL, BOOTSTRAP
from tests.e2e.procs import Fleet, ServiceProcess, service_env

pytestmark = pytest.mark.timeout(240)

SERVICES = ("ingest", "assigner", "idle_monitor", "stats")
ROLES = ("frontend", "operator", "admin")
# Routes open to anyone by design: probes, metrics, the API documents, the console's static files
# and the console's bootstrap config (where ingest and stats live; it holds no data).
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc", "/asyncapi.json",
                   "/console", "/v1/console/")
# Who may call each route; a route missing here fails the test until its roles are written down.
ALLOWED = {
    ("ingest", "POST", "/v1/chats/{chat_id}/messages"): {"frontend", "operator"},
    ("ingest", "POST", "/v1/messages:batch"): {"frontend"},
    ("assigner", "POST", "/v1/assignments/next"): {"operator"},
    ("assigner", "GET", "/v1/assignments/current"): {"operator"},
    ("assigner", "POST", "/v1/assignments/{assignment_id}/release"): {"operator"},
    ("assigner", "POST", "/v1/assignments/{assignment_id}/complete"): {"operator"},
    ("assigner", "GET", "/v1/chats/{chat_id}"): {"operator", "admin"},
    ("assigner", "POST", "/v1/admin/chats/{chat_id}/reassign"): {"admin"},
    ("assigner", "POST", "/v1/admin/chats/{chat_id}/complete"): {"admin"},
    ("assigner", "DELETE", "/v1/admin/chats/{chat_id}/content"): {"admin"},
    ("assigner", "GET", "/v1/admin/queue"): {"admin"},
    ("assigner", "GET", "/v1/admin/stuck-chats"): {"admin"},
    ("idle_monitor", "GET", "/v1/admin/timers"): {"admin"},
    ("stats", "GET", "/v1/operators/{operator_id}/stats"): {"operator", "admin"},
    ("stats", "GET", "/v1/stats/operators"): {"admin"},
    ("stats", "GET", "/v1/chats/{chat_id}/stats"): {"admin"},
}
# Bodies that would be valid, so that only the token can be the reason for a refusal.
BODIES = {
    "/v1/chats/{chat_id}/messages": {"message_id": "m-sec", "sender": "user", "text": "hi"},
    "/v1/messages:batch": {"messages": [{"chat_id": "c-sec", "message_id": "m-sec", "sender": "user",
                                         "text": "hi"}]},
    "/v1/admin/chats/{chat_id}/reassign": {"operator_id": "op-sec"},
}
PATH_VALUES = {"chat_id": "c-sec", "assignment_id": str(uuid.uuid4()), "operator_id": "op-sec"}
OTHER_SECRET = "not-the-switchboard-secret-0123456789abcdef"


def bad_credentials() -> dict[str, dict[str, str]]:
    """Authorization headers that must all be refused with 401."""
    now = int(time.time())
    secret = harness.TEST_SECRET
    return {
        "none": {},
        "empty bearer": {"Authorization": "Bearer"},
        "not a jwt": {"Authorization": "Bearer not-a-token"},
        "basic scheme": {"Authorization": "Basic " + issue_token(secret, "admin-1", "admin")},
        "bad signature": {"Authorization": "Bearer " + issue_token(OTHER_SECRET, "admin-1", "admin")},
        "expired": {"Authorization": "Bearer " + issue_token(secret, "admin-1", "admin", ttl_s=-30)},
        "alg none": {"Authorization": "Bearer " + jwt.encode(
            {"sub": "admin-1", "role": "admin", "exp": now + 600}, None, algorithm="none")},
        "unknown role": {"Authorization": "Bearer " + jwt.encode(
            {"sub": "root", "role": "superuser", "exp": now + 600}, secret, algorithm="HS256")},
        "no expiry": {"Authorization": "Bearer " + jwt.encode(
            {"sub": "admin-1", "role": "admin"}, secret, algorithm="HS256")},
        "empty subject": {"Authorization": "Bearer " + jwt.encode(
            {"sub": "", "role": "admin", "exp": now + 600}, secret, algorithm="HS256")},
        "tampered payload": {"Authorization": "Bearer " + _tampered(secret)},
    }


def _tampered(secret: str) -> str:
    """An operator token whose payload was swapped for an admin one, keeping the signature."""
    import base64
    import json

    header, _, signature = issue_token(secret, "op-1", "operator").split(".")
    claims = {"sub": "op-1", "role": "admin", "exp": int(time.time()) + 600}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


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


async def call(client: httpx.AsyncClient, fleet: Fleet, route: tuple[str, str, str], headers: dict,
               content: bytes | None = None) -> httpx.Response:
    name, method, path = route
    url = fleet[name].url + path.format(**{k: v for k, v in PATH_VALUES.items() if "{" + k + "}" in path})
    if content is None and path in BODIES:
        return await client.request(method, url, headers=headers, json=BODIES[path])
    return await client.request(method, url, headers={**headers, "Content-Type": "application/json"},
                                content=content)


async def test_every_route_in_every_openapi_document_has_its_roles_written_down(fleet):
    async with httpx.AsyncClient(timeout=10) as client:
        found = await routes(client, fleet)
    assert set(found) == set(ALLOWED), {"undocumented roles": sorted(set(found) - set(ALLOWED)),
                                        "vanished routes": sorted(set(ALLOWED) - set(found))}


async def test_every_route_refuses_missing_malformed_forged_and_expired_tokens_with_401(fleet):
    failures = []
    async with httpx.AsyncClient(timeout=10) as client:
        for route in await routes(client, fleet):
            for label, headers in bad_credentials().items():
                r = await call(client, fleet, route, headers)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                if r.status_code != 401 or "error" not in body:
                    failures.append((route, label, r.status_code, r.text[:200]))
    assert not failures, failures


async def test_every_route_refuses_the_roles_it_does_not_admit_with_403(fleet):
    failures = []
    async with httpx.AsyncClient(timeout=10) as client:
        for route in await routes(client, fleet):
            for role in set(ROLES) - ALLOWED.get(route, set(ROLES)):
                r = await call(client, fleet, route, harness.token(f"{role}-sec", role))
                if r.status_code != 403 or r.json().get("error", {}).get("code") is None:
                    failures.append((route, role, r.status_code, r.text[:200]))
    assert not failures, failures


async def test_a_missing_token_is_401_even_when_the_body_is_not_json(fleet):
    failures = []
    async with httpx.AsyncClient(timeout=10) as client:
        for route in await routes(client, fleet):
            if route[1] != "POST":
                continue
            for content in (b'{"unterminated', b"\xff\xfe", b'{"message_id": 5}'):
                r = await call(client, fleet, route, {}, content=content)
                if r.status_code != 401:
                    failures.append((route, content, r.status_code, r.text[:200]))
    assert not failures, failures


async def test_an_operator_cannot_read_release_or_complete_another_operators_chat_nor_read_their_figures(fleet):
    alice, bob = harness.token("op-alice"), harness.token("op-bob")
    frontend, admin = harness.token("web", "frontend"), harness.token("admin-1", "admin")
    chat = f"c-{uuid.uuid4().hex[:8]}"
    ingest, assigner, stats = fleet["ingest"].url, fleet["assigner"].url, fleet["stats"].url
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"{ingest}/v1/chats/{chat}/messages", headers=frontend,
                              json={"message_id": "m-1", "sender": "user", "text": "help"})
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
        r = await client.post(f"{ingest}/v1/chats/{chat}/messages", headers=bob,
                              json={"message_id": "m-2", "sender": "operator", "operator_id": "op-alice",
                                    "text": "it is me, alice"})
        assert r.status_code == 403, r.text
        r = await client.post(f"{ingest}/v1/chats/{chat}/messages", headers=bob,
                              json={"message_id": "m-3", "sender": "user", "text": "i am the user"})
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


async def test_no_service_starts_with_the_development_secret_or_a_short_one_unless_in_development_mode(
        fleet, tmp_path):
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
    forged = [h["Authorization"].split(" ", 1)[1] for h in bad_credentials().values()
              if h.get("Authorization", "").startswith("Bearer ") and len(h["Authorization"]) > 20]
    async with httpx.AsyncClient(timeout=10) as client:
        for route in await routes(client, fleet):
            for tok in tokens + forged:
                await call(client, fleet, route, {"Authorization": f"Bearer {tok}"})
                await call(client, fleet, route, {"Authorization": f"Bearer {tok}"}, content=b"{broken")
        # Make the services talk: a message flows through ingest, the assigner and stats.
        r = await client.post(f"{fleet['ingest'].url}/v1/chats/c-log/messages",
                              headers={"Authorization": f"Bearer {tokens[0]}"},
                              json={"message_id": "m-log", "sender": "user", "text": "log me"})
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
