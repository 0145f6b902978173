"""HTTP API of ingest (docs/contract.md §4): frontends post user and operator messages, one at a time or in batches.

Bodies are read here, not by FastAPI, so that the token is checked before anything about the
body (docs/contract.md §4: 401 first), and so that a body without Content-Length (chunked) is cut off at
the size limit instead of being read whole.
"""

from __future__ import annotations

import math
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ValidationError

from services.ingest import domain, handlers, metrics
from services.ingest.domain import BatchIn, BatchItemIn, MessageIn
from shared.auth import Principal, authorize, require
from shared.errors import ApiError, describe, validation_error
from shared.events import ID_PATTERN, new_event_id, utcnow
from shared.http import ERROR_SCHEMA, HotRoute, json_body

router = APIRouter()
MESSAGE_PATH = "/v1/chats/{chat_id}/messages"
POSTERS = ("frontend", "operator", "chat")  # who may post a message (a chat token: to its own chat only)


class AcceptedOut(BaseModel):
    """Kafka acknowledged the message's event (now or on an earlier request)."""

    event_id: uuid.UUID
    duplicate: bool


class ItemError(BaseModel):
    code: str
    message: str
    details: list[dict] | None = None


class ItemResult(BaseModel):
    """What happened to one message of a batch; `status` is what the single endpoint would have answered."""

    index: int
    chat_id: str | None
    message_id: str | None
    status: Literal[202, 422, 503]
    event_id: uuid.UUID | None = None
    duplicate: bool | None = None
    error: ItemError | None = None


class BatchOut(BaseModel):
    """Per-message results, in request order, and their counts."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[ItemResult]


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def _batch_schema() -> dict:
    schema = BatchIn.model_json_schema()
    schema["properties"]["messages"]["items"] = BatchItemIn.model_json_schema()
    return schema


def _retry_after(request: Request) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(request.app.state.settings.kafka_send_timeout_s / 2)))}


def _unavailable(request: Request, what: str, details=None) -> ApiError:
    message = {
        "kafka": "Kafka did not acknowledge the event in time; retry with the same message_id",
        "postgres": "the idempotency store did not answer; retry with the same message_id",
    }[what]
    return ApiError(503, f"{what}_unavailable", message, headers=_retry_after(request), details=details)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it exceeds `limit` bytes (with or without Content-Length)."""
    length = request.headers.get("content-length")
    too_large = ApiError(413, "payload_too_large", f"body exceeds {limit} bytes")
    if length is not None and length.isdigit() and int(length) > limit:
        metrics.rejected("body_too_large")
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            metrics.rejected("body_too_large")
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


COMMON_RESPONSES = {
    413: _error_response("The body is larger than the limit."),
    503: _error_response("Kafka or Postgres did not answer in time; nothing was accepted. See Retry-After."),
}


@router.post(
    MESSAGE_PATH,
    status_code=202,
    response_model=AcceptedOut,
    tags=["messages"],
    summary="Publish a user or operator message of a chat.",
    description=(
        "Answers 202 once Kafka acknowledged (acks=all) the `chat.inbound` event. Retry blindly with the "
        "same `message_id`: the answer carries the first `event_id`; `duplicate` is true when an earlier "
        "request already got it accepted."
    ),
    responses=COMMON_RESPONSES,
    openapi_extra=json_body(MessageIn),
)
async def post_message(
    request: Request,
    chat_id: str = Path(description="The chat; also the Kafka key.", json_schema_extra={"pattern": ID_PATTERN}),
    me: Principal = Depends(require(*POSTERS)),
) -> AcceptedOut:
    """Validate one message, publish its event, answer with its event id.

    Declared here for OpenAPI; requests are served by `post_message_hot` (the same code without
    FastAPI's dependency solving and response encoding, a third of ingest's CPU per message).
    """
    return await accept_message(request, chat_id, me)


async def post_message_hot(request: Request, params: dict[str, str]) -> Response:
    """`post_message` as a HotRoute: the token first (401 before any 422), then the same code."""
    me = await authorize(request, *POSTERS)
    out = await accept_message(request, params["chat_id"], me)
    return Response(out.__pydantic_serializer__.to_json(out), status_code=202, media_type="application/json")


HOT_ROUTES = (HotRoute("POST", MESSAGE_PATH, post_message_hot),)


async def accept_message(request: Request, chat_id: str, me: Principal) -> AcceptedOut:
    """One message of `chat_id` posted by `me`: checked, published, answered with its event id."""
    if me.role == "chat" and me.sub != chat_id:
        # A chat token (delivery's widget) belongs to one chat: no other chat, whatever the body.
        metrics.rejected("chat_mismatch")
        raise ApiError(403, "chat_mismatch", "a chat token may only post to its own chat")
    body = await read_body(request, domain.MAX_MESSAGE_BYTES)
    try:
        domain.check_chat_id(chat_id)
        message = MessageIn.model_validate_json(body)
    except ValidationError as exc:
        errors = domain.field_errors(exc)
        metrics.rejected(errors[0]["type"])
        raise validation_error(errors) from None
    if me.role == "operator" and (message.sender != "operator" or message.operator_id != me.sub):
        # The console replies with the operator's own token: it may speak only as that operator.
        metrics.rejected("operator_mismatch")
        raise ApiError(403, "operator_mismatch", "an operator token may only post operator messages as itself")
    if me.role == "chat" and message.sender != "user":
        # The widget's token speaks only as the chat's user, never as an operator.
        metrics.rejected("chat_mismatch")
        raise ApiError(403, "chat_mismatch", "a chat token may only post user messages")
    draft = domain.draft(chat_id, message, new_event_id(), utcnow())
    try:
        answer = await request.app.state.coalescer.accept(draft)
    except handlers.DatabaseUnavailable:
        raise _unavailable(request, "postgres") from None
    if answer is None:
        raise _unavailable(request, "kafka")
    return AcceptedOut(event_id=answer.event_id, duplicate=answer.duplicate)


@router.post(
    "/v1/messages:batch",
    response_model=BatchOut,
    tags=["messages"],
    summary=f"Publish up to {domain.MAX_BATCH} messages of any chats in one call.",
    description=(
        "Each item is a message body plus its `chat_id`. Items are validated one by one: an invalid item "
        "gets its own 422 result and the others proceed. Items of one chat are published in request order. "
        "200 when every valid item was acknowledged by Kafka; 503 (with the per-item results in "
        "`error.details.results`) when some were not. Retrying the whole batch is always safe."
    ),
    responses=COMMON_RESPONSES,
    openapi_extra=json_body(_batch_schema()),
)
async def post_batch(request: Request, _: Principal = Depends(require("frontend"))):
    """Validate each message, publish the valid ones together, answer per message."""
    body = await read_body(request, domain.MAX_BATCH_BYTES)
    try:
        batch = BatchIn.model_validate_json(body)
    except ValidationError as exc:
        errors = domain.field_errors(exc)
        metrics.rejected(errors[0]["type"])
        raise validation_error(errors) from None
    results: list[ItemResult | None] = []
    drafts, positions = [], []
    now = utcnow()
    for index, raw in enumerate(batch.messages):
        try:
            item = BatchItemIn.model_validate(raw)
        except ValidationError as exc:
            errors = domain.field_errors(exc)
            metrics.rejected(errors[0]["type"])
            ident = raw if isinstance(raw, dict) else {}
            results.append(
                ItemResult(
                    index=index,
                    chat_id=_str(ident.get("chat_id")),
                    message_id=_str(ident.get("message_id")),
                    status=422,
                    error=ItemError(code="validation_error", message=describe(errors), details=errors),
                )
            )
            continue
        results.append(None)
        positions.append(index)
        drafts.append(domain.draft(item.chat_id, item, new_event_id(), now))
    try:
        answers = await handlers.accept_messages(request.app.state.store, request.app.state.publisher, drafts)
    except handlers.DatabaseUnavailable:
        raise _unavailable(request, "postgres") from None
    for index, d, answer in zip(positions, drafts, answers):
        if answer is None:
            results[index] = ItemResult(
                index=index,
                chat_id=d.key.chat_id,
                message_id=d.key.message_id,
                status=503,
                error=ItemError(code="kafka_unavailable", message="Kafka did not acknowledge the event in time"),
            )
        else:
            results[index] = ItemResult(
                index=index,
                chat_id=d.key.chat_id,
                message_id=d.key.message_id,
                status=202,
                event_id=answer.event_id,
                duplicate=answer.duplicate,
            )
    done = [r for r in results if r is not None]
    out = BatchOut(
        accepted=sum(1 for r in done if r.status == 202 and not r.duplicate),
        duplicates=sum(1 for r in done if r.status == 202 and r.duplicate),
        rejected=sum(1 for r in done if r.status != 202),
        results=done,
    )
    if any(r.status == 503 for r in done):
        raise _unavailable(request, "kafka", details=out.model_dump(mode="json"))
    return out


def _str(value) -> str | None:
    return value if isinstance(value, str) else None
