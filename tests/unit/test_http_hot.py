"""Hot routes (shared.http.HotRoute): served ahead of FastAPI's router, answering exactly as FastAPI would.

Ingest's message post is one. Its FastAPI declaration stays for OpenAPI; these tests send the same
requests to the app as served (hot) and to the same app without its hot routes (FastAPI's route)
and require the same answers, then check what the mechanism itself keeps: CORS, the request
metrics' route label, the error shape and the fall-through to FastAPI for anything else.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from fastapi import Request, Response
from prometheus_client import REGISTRY

from services.assigner import api as assigner_api
from services.assigner import domain as assigner_domain
from services.assigner.usecases import NOTHING, Pulled
from services.ingest import api as ingest_api
from services.ingest.domain import MAX_MESSAGE_BYTES
from shared.auth import authorize
from shared.errors import ApiError
from shared.http import HotRoute, _Hot, create_app
from tests import fakes
from tests.harness import token

FRONTEND = token("web", "frontend")


def without_hot_routes(app):
    """The same app with FastAPI's routes only (before its middleware stack is built on the first request)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not _Hot]
    return app


class Refusing(fakes.IngestPublisher):
    """Kafka never acknowledges."""

    async def publish(self, records):
        return [TimeoutError("no ack")] * len(records)


class DownStore(fakes.IngestStore):
    async def claim(self, drafts):
        raise asyncpg.CannotConnectNowError("the database system is starting up")


def user(message_id: str, text: str = "hey") -> dict:
    return {"message_id": message_id, "sender": "user", "text": text}


REQUESTS = [
    pytest.param("c-1", {"json": user("m-1")}, FRONTEND, id="accepted"),
    pytest.param("c-1", {"json": {"message_id": "m-2", "sender": "user"}}, FRONTEND, id="invalid-body"),
    pytest.param("bad$chat", {"json": user("m-3")}, FRONTEND, id="invalid-chat-id"),
    pytest.param("c-1", {"content": b"{broken"}, {}, id="no-token-before-bad-body"),
    pytest.param("c-1", {"json": user("m-4")}, {"Authorization": "Bearer not.a.jwt"}, id="bad-token"),
    pytest.param("c-1", {"json": user("m-5")}, token("boss", "admin"), id="wrong-role"),
    pytest.param("c-1", {"json": user("m-6")}, token("c-2", "chat"), id="another-chats-token"),
    pytest.param("c-1", {"json": user("m-7")}, token("op-1", "operator"), id="operator-speaking-as-user"),
    pytest.param("c-1", {"content": b'{"text": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'}, FRONTEND, id="body-too-large"),
]


def comparable(r) -> tuple:
    body = r.json()
    if r.status_code == 202:
        body["event_id"] = "<uuid>" if len(body["event_id"]) == 36 else body["event_id"]
    headers = {k: r.headers.get(k) for k in ("content-type", "www-authenticate", "retry-after")}
    return r.status_code, body, headers


async def answers(app, chat_id, kwargs, headers, twice=False):
    async with fakes.serving(app, "ingest") as api:
        rs = [await api.post(f"/v1/chats/{chat_id}/messages", headers=headers, **kwargs)]
        if twice:
            rs.append(await api.post(f"/v1/chats/{chat_id}/messages", headers=headers, **kwargs))
    return [comparable(r) for r in rs]


@pytest.mark.parametrize("chat_id,kwargs,headers", REQUESTS)
async def test_the_hot_message_route_answers_as_the_declared_one(chat_id, kwargs, headers):
    def app():
        return fakes.build("ingest", store=fakes.IngestStore(), publisher=fakes.IngestPublisher())

    hot = await answers(app(), chat_id, kwargs, headers, twice=True)
    declared = await answers(without_hot_routes(app()), chat_id, kwargs, headers, twice=True)
    assert hot == declared
    assert hot[0][0] in (202, 401, 403, 413, 422)


@pytest.mark.parametrize(
    "adapters,code",
    [
        pytest.param({"store": fakes.IngestStore(), "publisher": Refusing()}, "kafka_unavailable", id="kafka"),
        pytest.param({"store": DownStore(), "publisher": fakes.IngestPublisher()}, "postgres_unavailable", id="pg"),
    ],
)
async def test_the_hot_message_route_answers_503_as_the_declared_one(adapters, code):
    hot = await answers(fakes.build("ingest", **adapters), "c-1", {"json": user("m-1")}, FRONTEND)
    declared = await answers(
        without_hot_routes(fakes.build("ingest", **adapters)), "c-1", {"json": user("m-1")}, FRONTEND
    )
    assert hot == declared
    status, body, headers = hot[0]
    assert (status, body["error"]["code"]) == (503, code)
    assert headers["retry-after"]


def test_ingest_serves_its_message_post_hot_and_still_documents_it():
    app = fakes.build("ingest")
    assert [m for m in app.user_middleware if m.cls is _Hot]
    assert ingest_api.HOT_ROUTES[0].path in app.openapi()["paths"]
    assert "post" in app.openapi()["paths"][ingest_api.HOT_ROUTES[0].path]


class Pulls:
    """The operators' batcher answering each operator from a script: a chat, nothing, or a refusal."""

    def __init__(self):
        self.settings = fakes.unit_settings()  # read as the Assigner's (the idle deadline)

    async def pull(self, operator_id: str):
        if operator_id == "op-empty":
            return NOTHING, None
        if operator_id == "op-away":
            raise assigner_domain.DomainError("operator is away")
        at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
        view = {
            "chat_id": "c-1",
            "state": "assigned",
            "assigned_operator_id": operator_id,
            "last_operator_id": None,
            "waiting_since": None,
            "message_count": 1,
            "messages": [],
        }
        return Pulled(uuid.UUID(int=7), "c-1", at, new=True), view


PULLERS = [
    pytest.param(token("op-1", "operator"), id="assigned"),
    pytest.param(token("op-empty", "operator"), id="nothing-waiting"),
    pytest.param(token("op-away", "operator"), id="refused"),
    pytest.param(token("web", "frontend"), id="wrong-role"),
    pytest.param({}, id="no-token"),
]


@pytest.mark.parametrize("headers", PULLERS)
async def test_the_hot_pull_answers_as_the_declared_one(headers):
    def app():
        pulls = Pulls()
        return fakes.build("assigner", store=pulls, batcher=pulls)

    async def answer(app):
        async with fakes.serving(app, "assigner") as api:
            r = await api.post("/v1/assignments/next", headers=headers)
        return r.status_code, (r.json() if r.content else None), r.headers.get("content-type")

    hot, declared = await answer(app()), await answer(without_hot_routes(app()))
    assert hot == declared
    assert hot[0] in (200, 204, 401, 403, 409)
    if hot[0] == 200:
        assert hot[1]["assignment_id"] == str(uuid.UUID(int=7)) and hot[1]["chat"]["chat_id"] == "c-1"


def test_the_assigner_serves_its_pull_hot_and_still_documents_it():
    app = fakes.build("assigner")
    assert [m for m in app.user_middleware if m.cls is _Hot]
    assert "post" in app.openapi()["paths"][assigner_api.PULL_PATH]


# -- the mechanism ---------------------------------------------------------------------------------


async def _echo(request: Request, params: dict[str, str]) -> Response:
    me = await authorize(request, "frontend")
    if params["thing"] == "down":
        raise asyncpg.CannotConnectNowError("starting up")
    if params["thing"] == "gone":
        raise ApiError(404, "thing_not_found", "no such thing")
    return Response(f'{{"thing": "{params["thing"]}", "by": "{me.sub}"}}', media_type="application/json")


def _app():
    app = create_app(
        "hot-test",
        title="hot",
        lifespan=None,
        readiness=lambda: {},
        auth_secret=fakes.unit_settings().auth_secret,
        hot_routes=(HotRoute("POST", "/v1/things/{thing}", _echo),),
    )

    @app.post("/v1/things/{thing}")
    async def declared(thing: str):  # never reached for POST: the hot route serves it
        raise AssertionError("the hot route should have served this")

    @app.get("/v1/things/{thing}")
    async def read(thing: str):
        return {"read": thing}

    return app


def _count(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_http_requests_total",
        {"service": "hot-test", "route": route, "method": "POST", "status": status},
    )
    return value or 0.0


async def test_a_hot_route_keeps_cors_metrics_and_the_error_shape():
    before_ok, before_401 = _count("/v1/things/{thing}", "200"), _count("/v1/things/{thing}", "401")
    async with fakes.serving(_app(), "hot") as api:
        ok = await api.post("/v1/things/a", headers={**FRONTEND, "Origin": "http://console.example"})
        missing = await api.post("/v1/things/a")
        role = await api.post("/v1/things/a", headers=token("op-1", "operator"))
        gone = await api.post("/v1/things/gone", headers=FRONTEND)
        down = await api.post("/v1/things/down", headers=FRONTEND)
        read = await api.get("/v1/things/a")
        other = await api.put("/v1/things/a", headers=FRONTEND)
        deeper = await api.post("/v1/things/a/b", headers=FRONTEND)
    assert (ok.status_code, ok.json()) == (200, {"thing": "a", "by": "web"})
    assert ok.headers["access-control-allow-origin"] == "*"
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_token"
    assert missing.headers["www-authenticate"] == 'Bearer realm="switchboard"'
    assert role.status_code == 403 and role.json()["error"]["code"] == "forbidden_role"
    assert gone.status_code == 404 and gone.json() == {"error": {"code": "thing_not_found", "message": "no such thing"}}
    assert down.status_code == 503 and down.json()["error"]["code"] == "postgres_unavailable"
    assert down.headers["retry-after"] == "2"
    # Anything else is FastAPI's, as before.
    assert (read.status_code, read.json()) == (200, {"read": "a"})
    assert other.status_code == 405 and other.json()["error"]["code"] == "method_not_allowed"
    assert deeper.status_code == 404 and deeper.json()["error"]["code"] == "not_found"
    # The request metrics label hot requests with the route's template, as FastAPI's.
    assert _count("/v1/things/{thing}", "200") == before_ok + 1
    assert _count("/v1/things/{thing}", "401") == before_401 + 1
