"""The HTTP shell every service shares: JSON errors, health, readiness, metrics, request metrics, AsyncAPI."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path, get_route_path

from shared import asyncapi, metrics
from shared.auth import jwks_verifier
from shared.db import DATABASE_DOWN
from shared.errors import REQUEST_PARTS, ApiError, field_errors, validation_error
from shared.settings import Settings

Readiness = Callable[[], Awaitable[dict[str, bool]]]

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        }
    },
}


# Typed as FastAPI's `responses` parameter (OpenAPI response objects by status code).
def error_entries(texts: dict[int, str], *codes: int) -> dict:
    """OpenAPI responses for the error statuses `codes` a route may answer, described by `texts`."""
    return {c: {"description": texts[c], "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}


def json_body(schema: type[BaseModel] | dict) -> dict:
    """`openapi_extra` declaring a required JSON body, for a route that reads its body itself after the
    token check (docs/contract.md §4: 401 before any 422), so OpenAPI still documents it."""
    if not isinstance(schema, dict):
        schema = schema.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": desc, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, desc in {
        401: "Missing, malformed, expired or badly signed bearer token.",
        403: "The token's role or subject may not do this.",
        422: "The request does not match its schema; the message names the field.",
        503: "A dependency (Postgres or Kafka) is unavailable; retry after Retry-After seconds.",
    }.items()
}


class _Observe:
    """Pure ASGI middleware: 413 by Content-Length, request count and latency by route template.

    (Starlette's BaseHTTPMiddleware costs an extra task and stream per request on the hot path.)
    """

    def __init__(self, app, service: str, max_body_bytes: int):
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                body = {"error": {"code": "payload_too_large", "message": f"body exceeds {self.max_body_bytes} bytes"}}
                return await JSONResponse(body, status_code=413)(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def observe_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(self.service, template, method, str(status["code"])).inc()
            metrics.HTTP_LATENCY.labels(self.service, template, method).observe(time.perf_counter() - started)


def _with_challenge(exc: ApiError) -> dict[str, str]:
    """RFC 6750: every 401 names the Bearer scheme; a token that was sent but refused is `invalid_token`."""
    headers = dict(exc.headers)
    if exc.status == 401 and not any(k.lower() == "www-authenticate" for k in headers):
        if exc.code == "missing_token":
            headers["WWW-Authenticate"] = 'Bearer realm="switchboard"'
        else:
            # RFC 6750 allows printable ASCII but `"` and `\` here; header values must stay latin-1 anyway.
            description = "".join(c for c in exc.message if " " <= c <= "~" and c not in '"\\')[:200]
            headers["WWW-Authenticate"] = (
                f'Bearer realm="switchboard", error="invalid_token", error_description="{description}"'
            )
    return headers


def api_error_response(exc: ApiError) -> JSONResponse:
    """The JSON error an ApiError becomes, on FastAPI's routes and on the hot routes alike."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=_with_challenge(exc))


def database_down_response(exc: Exception) -> JSONResponse:
    """503 for a database that does not answer (one of DATABASE_DOWN), with Retry-After."""
    body = {
        "error": {
            "code": "postgres_unavailable",
            "message": f"the database is unavailable ({type(exc).__name__}); retry shortly",
        }
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


HotEndpoint = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """A route served without FastAPI's routing, dependency solving and response-model encoding.

    For the requests every conversation turn makes (ingest's message post, the assigner's pull). The route stays
    declared on FastAPI for OpenAPI, with an endpoint calling the same code; `path` is its template,
    which the request metrics label it with. The endpoint gets the request and the path parameters,
    authenticates itself, and returns a Response; an ApiError or a database outage it raises becomes
    the same JSON error FastAPI's handlers send.
    """

    method: str
    path: str
    endpoint: HotEndpoint


class _Hot:
    """Pure ASGI middleware serving the app's HotRoutes, inside CORS and the request metrics."""

    def __init__(self, app, routes: tuple[HotRoute, ...]):
        self.app = app
        self.routes = [(r.method, compile_path(r.path)[0], r) for r in routes]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = get_route_path(scope)
            for method, regex, route in self.routes:
                if scope["method"] == method and (match := regex.match(path)) is not None:
                    scope["route"] = route  # the metrics' route label: its template
                    try:
                        response = await route.endpoint(Request(scope, receive), match.groupdict())
                    except ApiError as exc:
                        response = api_error_response(exc)
                    except DATABASE_DOWN as exc:
                        response = database_down_response(exc)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(
    service: str,
    *,
    title: str,
    lifespan,
    readiness: Readiness,
    auth_secret: str,
    max_body_bytes: int = 1024 * 1024,
    version: str = "1.0.0",
    cors_origins: tuple[str, ...] = ("*",),
    jwks=None,
    hot_routes: tuple[HotRoute, ...] = (),
) -> FastAPI:
    """A FastAPI app with Switchboard's error shape, `/healthz`, `/readyz`, `/metrics` and request metrics.

    `jwks` (shared.auth.JwksVerifier) also admits an identity provider's RS256/ES256 tokens.
    `hot_routes` are served ahead of FastAPI's router (see HotRoute), behind CORS and the metrics.
    """
    app = FastAPI(title=title, version=version, lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.auth_secret = auth_secret
    app.state.jwks = jwks
    app.state.service = service
    if hot_routes:  # added first: the innermost middleware, so CORS and the metrics wrap it
        app.add_middleware(_Hot, routes=hot_routes)
    # Bearer tokens, never cookies: the browser console on another port may call every service.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["*"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return api_error_response(exc)

    async def _database_down(_: Request, exc: Exception):
        return database_down_response(exc)

    for kind in DATABASE_DOWN:
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        error = validation_error(field_errors(exc.errors(), skip=REQUEST_PARTS))
        return JSONResponse(error.body(), status_code=error.status)

    app.add_middleware(_Observe, service=service, max_body_bytes=max_body_bytes)

    @app.get("/healthz", tags=["ops"], summary="The process is up.")
    async def healthz():
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["ops"], summary="Kafka and Postgres reachable, migrations applied.")
    async def readyz():
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus text format.")
    async def metrics_endpoint():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def service_app(
    service: str,
    settings: Settings,
    *,
    title: str,
    lifespan,
    readiness: Readiness,
    routers: tuple[APIRouter, ...] = (),
    max_body_bytes: int = 1024 * 1024,
    broker: KafkaBroker | None = None,
    hot_routes: tuple[HotRoute, ...] = (),
) -> FastAPI:
    """A service's app as every `bootstrap()` builds it: tokens from its settings (HS256, and the JWKS provider
    when one is configured), `app.state.settings`, and its routers.

    With the process's `broker`, the app serves the AsyncAPI document of what is declared on it at
    `/asyncapi.json` and as a page at `/asyncapi`, generated on each request (so declarations made
    while the app starts are in it).
    """
    app = create_app(
        service,
        title=title,
        lifespan=lifespan,
        readiness=readiness,
        auth_secret=settings.auth_secret,
        jwks=jwks_verifier(settings),
        max_body_bytes=max_body_bytes,
        hot_routes=hot_routes,
    )
    app.state.settings = settings
    app.state.broker = broker
    for router in routers:
        app.include_router(router)
    if broker is not None:
        _serve_asyncapi(app, service, settings, broker)
    return app


def _serve_asyncapi(app: FastAPI, service: str, settings: Settings, broker: KafkaBroker) -> None:
    @app.get("/asyncapi.json", tags=["docs"], summary="AsyncAPI 3.0 document of this process's Kafka side.")
    async def asyncapi_document():
        return JSONResponse(asyncapi.service_document(broker, service, settings))

    @app.get(
        "/asyncapi",
        tags=["docs"],
        summary="The AsyncAPI document as a page (self-contained: no script or stylesheet from elsewhere).",
        response_class=HTMLResponse,
    )
    async def asyncapi_page():
        return HTMLResponse(asyncapi.render_html(asyncapi.service_document(broker, service, settings)))
