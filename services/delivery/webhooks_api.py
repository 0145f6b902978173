"""Webhook administration (docs/contract.md §9): endpoints, their deliveries log, redelivery. Role admin."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AnyUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.delivery import webhooks
from services.delivery.store import QUERIES
from shared.auth import Principal, require
from shared.errors import ApiError
from shared.events import LIFECYCLE_TYPES
from shared.http import json_body

router = APIRouter(tags=["webhooks"])
MAX_URL = 2048
MAX_ID = 2**63 - 1  # bigserial


class WebhookIn(BaseModel):
    """A webhook endpoint to register."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=MAX_URL, description="http(s) URL the facts are POSTed to; redirects are not followed.")
    event_types: list[str] = Field(
        default_factory=list,
        max_length=len(LIFECYCLE_TYPES),
        description="chat.lifecycle fact types to send; empty: all.",
    )
    secret: str | None = Field(
        None, max_length=200, description="Signing secret `whsec_<base64>` (16+ bytes); omitted: one is generated."
    )

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        try:
            parsed = AnyUrl(value)
        except ValidationError:
            raise ValueError("not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("only http and https URLs with a host are allowed")
        try:  # the client that will send must accept it too (it refuses some hosts pydantic allows)
            httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a usable URL: {exc}") from None
        return value

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - LIFECYCLE_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {unknown}; choose from {sorted(LIFECYCLE_TYPES)}")
        return sorted(set(value))

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, value: str | None) -> str | None:
        if value is not None and not webhooks.usable_secret(value):
            raise ValueError("expected whsec_ followed by base64 of at least 16 bytes")
        return value


class WebhookOut(BaseModel):
    """A registered endpoint (the secret is shown only when it is created)."""

    id: uuid.UUID
    url: str
    event_types: list[str]
    created_at: datetime
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    secret: str | None = None


class DeliveryOut(BaseModel):
    """One fact queued for one endpoint, with its attempts so far."""

    id: int
    chat_id: str
    event_id: uuid.UUID
    type: str
    status: str = Field(description="pending (not yet acknowledged with a 2xx) or delivered.")
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveriesOut(BaseModel):
    """A page of an endpoint's deliveries, newest first; pass `next_before` as `before` for the next page."""

    deliveries: list[DeliveryOut]
    next_before: int | None


async def _body(request: Request) -> WebhookIn:
    # Read after the token was checked: docs/contract.md §4 wants 401 before any 422.
    raw = await request.body()
    try:
        return WebhookIn.model_validate_json(raw or b"null")
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = details[0]
        raise ApiError(422, "validation_error", f"{first['field']}: {first['message']}", details=details) from None


def _pool(request: Request):
    return request.app.state.store.pool


@router.post(
    "/v1/admin/webhooks",
    status_code=201,
    response_model=WebhookOut,
    summary="Register a webhook endpoint.",
    openapi_extra=json_body(WebhookIn),
)
async def create_webhook(request: Request, _: Principal = Depends(require("admin"))):
    """Facts of the chosen types are POSTed to the URL, signed per Standard Webhooks, from now on."""
    body = await _body(request)
    secret = body.secret or webhooks.new_secret()
    async with _pool(request).acquire() as conn:
        row = await conn.fetchrow(
            QUERIES.create_webhook, webhooks.new_endpoint_id(), body.url, body.event_types, secret
        )
    return {**dict(row), "secret": secret}


@router.get("/v1/admin/webhooks", response_model=list[WebhookOut], summary="Every webhook endpoint.")
async def list_webhooks(request: Request, _: Principal = Depends(require("admin"))):
    """Endpoints oldest first, with their failure state; secrets are not shown."""
    async with _pool(request).acquire() as conn:
        return [dict(r) for r in await conn.fetch(QUERIES.list_webhooks)]


@router.delete("/v1/admin/webhooks/{webhook_id}", status_code=204, summary="Remove an endpoint and its deliveries.")
async def delete_webhook(request: Request, webhook_id: uuid.UUID, _: Principal = Depends(require("admin"))):
    """Nothing more is queued or sent to it."""
    async with _pool(request).acquire() as conn:
        if await conn.fetchval(QUERIES.delete_webhook, webhook_id) is None:
            raise ApiError(404, "not_found", f"no webhook endpoint {webhook_id}")
    return Response(status_code=204)


@router.post("/v1/admin/webhooks/{webhook_id}/enable", status_code=204, summary="Re-enable a disabled endpoint.")
async def enable_webhook(request: Request, webhook_id: uuid.UUID, _: Principal = Depends(require("admin"))):
    """Its pending deliveries (queued while it was disabled too) go out again, in order."""
    async with _pool(request).acquire() as conn:
        if await conn.fetchval(QUERIES.enable_webhook, webhook_id) is None:
            raise ApiError(404, "not_found", f"no webhook endpoint {webhook_id}")
    return Response(status_code=204)


@router.get(
    "/v1/admin/webhooks/{webhook_id}/deliveries",
    response_model=DeliveriesOut,
    summary="An endpoint's deliveries log, newest first.",
)
async def list_deliveries(
    request: Request,
    webhook_id: uuid.UUID,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only deliveries with a smaller id.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    _: Principal = Depends(require("admin")),
):
    """Each delivery's status, attempts, last HTTP status and error."""
    async with _pool(request).acquire() as conn:
        rows = await conn.fetch(QUERIES.webhook_deliveries, webhook_id, before or MAX_ID, limit)
    deliveries = [dict(r) for r in rows]
    return {"deliveries": deliveries, "next_before": deliveries[-1]["id"] if len(deliveries) == limit else None}


@router.post(
    "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a delivery again.",
)
async def redeliver(
    request: Request,
    webhook_id: uuid.UUID,
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    _: Principal = Depends(require("admin")),
):
    """It goes out as soon as it is the oldest pending delivery of its chat for this endpoint."""
    async with _pool(request).acquire() as conn:
        if await conn.fetchval(QUERIES.redeliver_webhook, delivery_id, webhook_id) is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id} of webhook endpoint {webhook_id}")
    return {"id": delivery_id, "status": "pending"}
