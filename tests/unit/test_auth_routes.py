"""Identity and roles on every route of every service, over the apps built with fakes (no Kafka, no Postgres).

Every route of every service's OpenAPI document is called with no token, malformed and forged
tokens, an expired token, and each role it does not admit: 401 or 403 every time, before any
store, publisher or batcher is reached (they are `fakes.Untouched`). What needs the services as
processes (one operator against another's live assignment, the development secret refused at
start, tokens kept out of the logs) is in tests/e2e/test_security_identity.py, which shares the
tables below.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid

import httpx
import jwt

from shared.auth import issue_token
from tests import fakes, harness

SERVICES = ("ingest", "assigner", "idle_monitor", "stats")
ROLES = ("frontend", "operator", "admin")
# Routes open to anyone by design: probes, metrics, the API documents, the console's static files
# and the console's bootstrap config (where ingest and stats live; it holds no data).
PUBLIC_PREFIXES = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/asyncapi",  # /asyncapi.json and its page
    "/console",
    "/v1/console/",
)
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
    ("assigner", "GET", "/v1/admin/queues"): {"admin"},
    ("assigner", "PUT", "/v1/admin/queues/{queue_id}"): {"admin"},
    ("assigner", "GET", "/v1/admin/queues/{queue_id}"): {"admin"},
    ("assigner", "DELETE", "/v1/admin/queues/{queue_id}"): {"admin"},
    ("assigner", "GET", "/v1/admin/operators"): {"admin"},
    ("assigner", "PUT", "/v1/admin/operators/{operator_id}"): {"admin"},
    ("assigner", "GET", "/v1/admin/operators/{operator_id}"): {"admin"},
    ("assigner", "DELETE", "/v1/admin/operators/{operator_id}"): {"admin"},
    ("assigner", "PUT", "/v1/admin/operators/{operator_id}/status"): {"admin"},
    ("assigner", "PUT", "/v1/operators/me/status"): {"operator"},
    ("assigner", "GET", "/v1/operators/me"): {"operator"},
    ("assigner", "POST", "/v1/admin/chats/{chat_id}/route"): {"admin"},
    ("idle_monitor", "GET", "/v1/admin/timers"): {"admin"},
    ("stats", "GET", "/v1/operators/{operator_id}/stats"): {"operator", "admin"},
    ("stats", "GET", "/v1/stats/operators"): {"admin"},
    ("stats", "GET", "/v1/chats/{chat_id}/stats"): {"admin"},
    ("stats", "GET", "/v1/stats/queues"): {"admin"},
    ("stats", "GET", "/v1/queues/{queue_id}/stats"): {"admin"},
}
# Bodies that would be valid, so that only the token can be the reason for a refusal.
BODIES = {
    "/v1/chats/{chat_id}/messages": {"message_id": "m-sec", "sender": "user", "text": "hi"},
    "/v1/messages:batch": {"messages": [{"chat_id": "c-sec", "message_id": "m-sec", "sender": "user", "text": "hi"}]},
    "/v1/admin/chats/{chat_id}/reassign": {"operator_id": "op-sec"},
    "/v1/admin/queues/{queue_id}": {"name": "Sec"},
    "/v1/admin/operators/{operator_id}": {"queues": ["default"]},
    "/v1/admin/operators/{operator_id}/status": {"status": "away"},
    "/v1/operators/me/status": {"status": "away"},
    "/v1/admin/chats/{chat_id}/route": {"priority": 1},
}
PATH_VALUES = {"chat_id": "c-sec", "assignment_id": str(uuid.uuid4()), "operator_id": "op-sec", "queue_id": "q-sec"}
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
        "alg none": {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "admin-1", "role": "admin", "exp": now + 600}, None, algorithm="none")
        },
        "unknown role": {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "root", "role": "superuser", "exp": now + 600}, secret, algorithm="HS256")
        },
        "no expiry": {
            "Authorization": "Bearer " + jwt.encode({"sub": "admin-1", "role": "admin"}, secret, algorithm="HS256")
        },
        "empty subject": {
            "Authorization": "Bearer "
            + jwt.encode({"sub": "", "role": "admin", "exp": now + 600}, secret, algorithm="HS256")
        },
        "tampered payload": {"Authorization": "Bearer " + _tampered(secret)},
    }


def _tampered(secret: str) -> str:
    """An operator token whose payload was swapped for an admin one, keeping the signature."""
    header, _, signature = issue_token(secret, "op-1", "operator").split(".")
    claims = {"sub": "op-1", "role": "admin", "exp": int(time.time()) + 600}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def path_of(template: str) -> str:
    """A route's path template with the sample values filled in."""
    return template.format(**{k: v for k, v in PATH_VALUES.items() if "{" + k + "}" in template})


async def operations(clients: dict[str, httpx.AsyncClient]) -> list[tuple[str, str, str]]:
    """(service, method, path template) of every non-public operation in the OpenAPI documents."""
    found = []
    for name in SERVICES:
        doc = (await clients[name].get("/openapi.json")).json()
        for path, ops in doc["paths"].items():
            if path.startswith(PUBLIC_PREFIXES):
                continue
            for method in ops:
                if method in ("get", "post", "put", "patch", "delete"):
                    found.append((name, method.upper(), path))
    return found


@contextlib.asynccontextmanager
async def four_services():
    """The four services' apps over `fakes.Untouched` adapters, each with an in-process client."""
    apps = {name: fakes.build(name) for name in SERVICES}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(fakes.serving(app, name)) for name, app in apps.items()}
        yield clients
    for app in apps.values():
        for attr in ("store", "publisher", "batcher"):
            adapter = getattr(app.state, attr, None)
            if isinstance(adapter, fakes.Untouched):
                assert adapter.reached == [], f"the {adapter.name} was reached: {adapter.reached}"


async def call(clients, route: tuple[str, str, str], headers: dict, content: bytes | None = None) -> httpx.Response:
    name, method, template = route
    if content is None and template in BODIES:
        return await clients[name].request(method, path_of(template), headers=headers, json=BODIES[template])
    return await clients[name].request(
        method, path_of(template), headers={**headers, "Content-Type": "application/json"}, content=content
    )


async def test_every_route_in_every_openapi_document_has_its_roles_written_down():
    async with four_services() as clients:
        found = await operations(clients)
    assert set(found) == set(ALLOWED), {
        "undocumented roles": sorted(set(found) - set(ALLOWED)),
        "vanished routes": sorted(set(ALLOWED) - set(found)),
    }


async def test_every_route_refuses_missing_malformed_forged_and_expired_tokens_with_401():
    failures = []
    async with four_services() as clients:
        for route in await operations(clients):
            for label, headers in bad_credentials().items():
                r = await call(clients, route, headers)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                if r.status_code != 401 or "error" not in body:
                    failures.append((route, label, r.status_code, r.text[:200]))
    assert not failures, failures


async def test_every_route_refuses_the_roles_it_does_not_admit_with_403():
    failures = []
    async with four_services() as clients:
        for route in await operations(clients):
            for role in set(ROLES) - ALLOWED.get(route, set(ROLES)):
                r = await call(clients, route, harness.token(f"{role}-sec", role))
                if r.status_code != 403 or r.json().get("error", {}).get("code") is None:
                    failures.append((route, role, r.status_code, r.text[:200]))
    assert not failures, failures


async def test_a_missing_token_is_401_even_when_the_body_is_not_json():
    failures = []
    async with four_services() as clients:
        for route in await operations(clients):
            if route[1] != "POST":
                continue
            for content in (b'{"unterminated', b"\xff\xfe", b'{"message_id": 5}'):
                r = await call(clients, route, {}, content=content)
                if r.status_code != 401:
                    failures.append((route, content, r.status_code, r.text[:200]))
    assert not failures, failures
