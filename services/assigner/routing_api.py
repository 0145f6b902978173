"""HTTP API of routing (docs/contract.md "Routing"): queues, operator profiles, presence, a chat's route.

Bodies are read after the token was checked (docs/contract.md §4: 401 before any 422), as api.py does.
Its routes are declared in the same FastAPI decorator form as api.py's (`duplicates` sees their shape
alike); the body reading, errors and OpenAPI entries they share come from api.py and shared.http.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.assigner import domain, routing
from services.assigner.api import ChatOut, _body, _json, domain_error
from services.assigner.routing import Profile, Queue
from services.assigner.routing_usecases import RoutingCommands
from shared.auth import Principal, require
from shared.errors import ApiError, validation_error
from shared.events import (
    DEFAULT_QUEUE,
    ID_PATTERN,
    SLUG_PATTERN,
    OperatorStatus,
    QueueId,
    Routing,
    Skill,
    check_operator_id,
)
from shared.http import error_entries, json_body
from shared.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, decode_cursor, encode_cursor

router = APIRouter()
QUEUES_CURSOR = "assigner.queues"
OPERATORS_CURSOR = "assigner.operators"
DAY_S = 86400


class QueueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    priority_step_s: int = Field(60, ge=0, le=DAY_S, description="Seconds of waiting one priority point is worth.")
    sla_first_assignment_s: int = Field(60, ge=0, le=DAY_S, description="Target wait until the first assignment.")
    skills_relax_after_s: int | None = Field(
        None, ge=0, le=30 * DAY_S, description="After this long waiting, a chat's skills no longer restrict it."
    )
    idle_timeout_s: int | None = Field(None, gt=0, le=DAY_S, description="Override of SWITCHBOARD_IDLE_TIMEOUT_S.")
    repeat_cooldown_s: int | None = Field(None, ge=0, le=DAY_S, description="Override of REPEAT_COOLDOWN_S.")


class QueueOut(QueueIn):
    queue_id: str
    created_at: datetime
    updated_at: datetime


class QueueListed(QueueOut):
    waiting: int = Field(description="Chats waiting in the queue now.")
    oldest_waiting_since: datetime | None = Field(description="When its longest-waiting chat started waiting.")
    oldest_waiting_s: float | None = Field(description="That chat's waiting time in seconds; null: none waiting.")


class QueuesPage(BaseModel):
    queues: list[QueueListed]
    next_cursor: str | None


class QueueDeleted(BaseModel):
    queue_id: str
    moved_chats: int = Field(description="Open chats moved to `default` (waiting ones keep their waiting time).")


class OperatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: str = Field("", max_length=200, pattern=r"^[^\x00]*$")
    queues: list[QueueId] = Field(default_factory=lambda: [DEFAULT_QUEUE], max_length=routing.MAX_QUEUES)
    skills: list[Skill] = Field(default_factory=list, max_length=64)
    capacity: int | None = Field(None, ge=0, le=1000, description="null: SWITCHBOARD_OPERATOR_CAPACITY.")


class OperatorOut(BaseModel):
    operator_id: str
    display_name: str
    queues: list[str]
    skills: list[str]
    capacity: int | None
    status: OperatorStatus


class OperatorsPage(BaseModel):
    operators: list[OperatorOut]
    next_cursor: str | None


class OperatorRemoved(BaseModel):
    operator_id: str
    returned_chats: int = Field(description="Chats it held, put back in their queues.")


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: OperatorStatus


class RouteIn(Routing):
    """queue (must exist), priority (0-9) and/or skills (up to 8 slugs); each given replaces the chat's."""


async def _commands(request: Request) -> RoutingCommands:
    commands = request.app.state.routing
    if commands is None:
        raise ApiError(503, "routing_unavailable", "routing is not served by this assigner")
    return commands


def _slug(queue_id: str) -> str:
    if not re.match(SLUG_PATTERN, queue_id):
        raise validation_error(
            [{"field": "queue_id", "message": f"must match {SLUG_PATTERN}", "type": "string_pattern_mismatch"}]
        )
    return queue_id


def _known_slug(queue_id: str) -> str:
    """A queue id to look up: one that is no slug names no queue (404, before any query)."""
    if not re.match(SLUG_PATTERN, queue_id):
        raise ApiError(404, "queue_not_found", f"queue {queue_id!r} does not exist")
    return queue_id


def _operator(operator_id: str) -> str:
    try:
        return check_operator_id(operator_id)
    except ValueError as exc:
        raise validation_error([{"field": "operator_id", "message": str(exc), "type": "value_error"}]) from None


def _refused(exc: domain.DomainError) -> ApiError:
    if isinstance(exc, routing.UnknownQueue):
        return ApiError(422, "unknown_queue", str(exc))
    return domain_error(exc)


def errors(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a routing route may answer."""
    text = {
        404: "No such queue, operator profile or chat (an id holding a line break matches no route: 404).",
        409: "Refused by the current state: `default` kept, 500 queues, operator away or offline.",
    }
    return error_entries(text, *codes)


QueuePath = Annotated[str, Path(description="The queue id (a slug).")]
OperatorPath = Annotated[str, Path(description="The operator id (a token's `sub`), URL-encoded.")]


# ---- queues ---------------------------------------------------------------------------------------


@router.put(
    "/v1/admin/queues/{queue_id}",
    response_model=QueueOut,
    tags=["routing"],
    summary="Create or replace a queue (200 replaced, 201 created; at most 500 queues).",
    responses={201: {"description": "Created.", "model": QueueOut}, **errors(409)},
    openapi_extra=json_body(QueueIn),
)
async def put_queue(
    queue_id: QueuePath,
    request: Request,
    _: Principal = Depends(require("admin")),
    c: RoutingCommands = Depends(_commands),
):
    body = await _body(request, QueueIn)
    try:
        row, created = await c.put_queue(Queue(queue_id=_slug(queue_id), **body.model_dump()))
    except domain.DomainError as exc:
        raise _refused(exc) from None
    return Response(
        QueueOut.model_validate(row).model_dump_json(),
        status_code=201 if created else 200,
        media_type="application/json",
    )


@router.get(
    "/v1/admin/queues",
    response_model=QueuesPage,
    tags=["routing"],
    summary="Queues by id, one page, each with its waiting chats and oldest wait.",
)
async def list_queues(
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
    _: Principal = Depends(require("admin")),
    c: RoutingCommands = Depends(_commands),
):
    after = decode_cursor(QUEUES_CURSOR, cursor, 1)
    rows, resume = await c.queues_page(limit, after[0] if after else None)
    now = c.clock()
    for row in rows:
        oldest = row["oldest_waiting_since"]
        row["oldest_waiting_s"] = (now - oldest).total_seconds() if oldest else None
    return {"queues": rows, "next_cursor": encode_cursor(QUEUES_CURSOR, [resume]) if resume else None}


@router.get(
    "/v1/admin/queues/{queue_id}",
    response_model=QueueOut,
    tags=["routing"],
    summary="One queue.",
    responses=errors(404),
)
async def get_queue(
    queue_id: QueuePath, _: Principal = Depends(require("admin")), c: RoutingCommands = Depends(_commands)
):
    row = await c.get_queue(_known_slug(queue_id))
    if row is None:
        raise ApiError(404, "queue_not_found", f"queue {queue_id} does not exist")
    return row


@router.delete(
    "/v1/admin/queues/{queue_id}",
    response_model=QueueDeleted,
    tags=["routing"],
    summary="Delete a queue: its chats move to `default`, keeping their waiting time (`default` stays: 409).",
    responses=errors(404, 409),
)
async def delete_queue(
    queue_id: QueuePath, _: Principal = Depends(require("admin")), c: RoutingCommands = Depends(_commands)
):
    try:
        moved = await c.delete_queue(_known_slug(queue_id))
    except routing.UnknownQueue as exc:
        raise ApiError(404, "queue_not_found", str(exc)) from None
    except domain.DomainError as exc:
        raise _refused(exc) from None
    return {"queue_id": queue_id, "moved_chats": moved}


# ---- operators (the /status routes first: an operator id may contain '/') -------------------------


@router.put(
    "/v1/admin/operators/{operator_id:path}/status",
    response_model=OperatorOut,
    tags=["routing"],
    summary="Set an operator's presence (offline returns its chats to their queues at once).",
    responses=errors(404, 409),
    openapi_extra=json_body(StatusIn),
)
async def admin_status(
    operator_id: OperatorPath,
    request: Request,
    _: Principal = Depends(require("admin")),
    c: RoutingCommands = Depends(_commands),
):
    body = await _body(request, StatusIn)
    try:
        return await c.set_status(_operator(operator_id), body.status, "admin")
    except domain.DomainError as exc:
        raise _refused(exc) from None


@router.put(
    "/v1/operators/me/status",
    response_model=OperatorOut,
    tags=["operator"],
    summary="Set my presence: available, away (no new chats) or offline (my chats go back to their queues).",
    responses=errors(409),
    openapi_extra=json_body(StatusIn),
)
async def my_status(
    request: Request, me: Principal = Depends(require("operator")), c: RoutingCommands = Depends(_commands)
):
    body = await _body(request, StatusIn)
    try:
        return await c.set_status(me.sub, body.status, "self")
    except domain.DomainError as exc:
        raise _refused(exc) from None


@router.get("/v1/operators/me", response_model=OperatorOut, tags=["operator"], summary="My routing profile and status.")
async def me_profile(me: Principal = Depends(require("operator")), c: RoutingCommands = Depends(_commands)):
    return await c.get_operator(me.sub, or_default=True)


@router.get(
    "/v1/admin/operators", response_model=OperatorsPage, tags=["routing"], summary="Operator profiles, one page."
)
async def list_operators(
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
    _: Principal = Depends(require("admin")),
    c: RoutingCommands = Depends(_commands),
):
    after = decode_cursor(OPERATORS_CURSOR, cursor, 1)
    rows, resume = await c.operators_page(limit, after[0] if after else None)
    return {"operators": rows, "next_cursor": encode_cursor(OPERATORS_CURSOR, [resume]) if resume else None}


@router.put(
    "/v1/admin/operators/{operator_id:path}",
    response_model=OperatorOut,
    tags=["routing"],
    summary="Create or replace an operator's profile (200 replaced, 201 created; its status is kept).",
    responses={201: {"description": "Created.", "model": OperatorOut}, **errors(404, 409)},
    openapi_extra=json_body(OperatorIn),
)
async def put_operator(
    operator_id: OperatorPath,
    request: Request,
    _: Principal = Depends(require("admin")),
    c: RoutingCommands = Depends(_commands),
):
    body = await _body(request, OperatorIn)
    profile = Profile(
        operator_id=_operator(operator_id),
        display_name=body.display_name,
        queues=tuple(body.queues),
        skills=frozenset(body.skills),
        capacity=body.capacity,
    )
    try:
        view, created = await c.put_operator(profile)
    except domain.DomainError as exc:
        raise _refused(exc) from None
    return Response(
        OperatorOut.model_validate(view).model_dump_json(),
        status_code=201 if created else 200,
        media_type="application/json",
    )


@router.get(
    "/v1/admin/operators/{operator_id:path}",
    response_model=OperatorOut,
    tags=["routing"],
    summary="One operator's profile.",
    responses=errors(404),
)
async def get_operator(
    operator_id: OperatorPath, _: Principal = Depends(require("admin")), c: RoutingCommands = Depends(_commands)
):
    view = await c.get_operator(_operator(operator_id))
    if view is None:
        raise ApiError(404, "operator_not_found", f"operator {operator_id} has no profile")
    return view


@router.delete(
    "/v1/admin/operators/{operator_id:path}",
    response_model=OperatorRemoved,
    tags=["routing"],
    summary="Remove an operator's profile; the chats it holds go back to their queues.",
    responses=errors(404, 409),
)
async def delete_operator(
    operator_id: OperatorPath, _: Principal = Depends(require("admin")), c: RoutingCommands = Depends(_commands)
):
    try:
        returned = await c.delete_operator(_operator(operator_id))
    except routing.UnknownOperator as exc:
        raise ApiError(404, "operator_not_found", str(exc)) from None
    except domain.DomainError as exc:
        raise _refused(exc) from None
    return {"operator_id": operator_id, "returned_chats": returned}


# ---- a chat's route ---------------------------------------------------------------------------


@router.post(
    "/v1/admin/chats/{chat_id}/route",
    response_model=ChatOut,
    tags=["routing"],
    summary="Set a chat's queue (must exist), priority or skills; a waiting chat keeps its waiting time.",
    responses=errors(404, 409),
    openapi_extra=json_body(RouteIn),
)
async def route_chat(
    chat_id: str, request: Request, _: Principal = Depends(require("admin")), c: RoutingCommands = Depends(_commands)
):
    body = await _body(request, RouteIn)
    if not re.match(ID_PATTERN, chat_id):  # no event can carry such an id: no such chat
        raise ApiError(404, "chat_not_found", f"chat {chat_id!r} does not exist")
    try:
        return _json(ChatOut, await c.route_chat(chat_id, body))
    except domain.DomainError as exc:
        raise _refused(exc) from None
