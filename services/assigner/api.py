"""HTTP API of the assigner (docs/contract.md §4): operators pull and release; admins reassign and watch."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.assigner import domain, metrics, routing
from services.assigner.batcher import OperatorBatcher
from services.assigner.usecases import Assigner, Pulled
from shared.auth import Principal, authorize, require
from shared.errors import ApiError, field_errors, validation_error
from shared.events import ID_PATTERN, OperatorId
from shared.http import HotRoute, error_entries, json_body
from shared.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, decode_cursor, encode_cursor, invalid_cursor

router = APIRouter()
STATIC = Path(__file__).parent / "static"
STUCK_CURSOR = "assigner.stuck-chats"


class MessageOut(BaseModel):
    message_id: str
    sender: Literal["user", "operator"]
    operator_id: str | None
    text: str | None = Field(description="null once the text was purged (retention) or erased by an admin.")
    sent_at: datetime | None
    recorded_at: datetime


class ChatOut(BaseModel):
    chat_id: str
    state: Literal["waiting_assignment", "assigned", "waiting_real_user_reply", "completed"]
    assigned_operator_id: str | None
    last_operator_id: str | None
    waiting_since: datetime | None
    message_count: int
    queue_id: str = Field(default="default", description="The queue the chat waits in (docs/contract.md, Routing).")
    priority: int = 0
    skills: list[str] = Field(default_factory=list)
    messages: list[MessageOut]


class AssignmentOut(BaseModel):
    assignment_id: uuid.UUID
    chat: ChatOut
    assigned_at: datetime
    idle_deadline: datetime


class ReleasedOut(BaseModel):
    assignment_id: uuid.UUID
    chat_id: str
    status: Literal["released", "completed"]


class ReassignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operator_id: OperatorId = Field(description="The operator who gets the chat: printable text, 1 to 255 characters.")


class QueueOut(BaseModel):
    chats_by_state: dict[str, int]
    oldest_waiting_since: datetime | None
    oldest_waiting_age_s: float
    active_assignments: int
    operators: list[dict]


class StuckChat(BaseModel):
    chat_id: str
    state: str
    assigned_operator_id: str | None
    last_operator_id: str | None
    waiting_since: datetime | None
    assigned_at: datetime | None


class StuckChatsPage(BaseModel):
    chats: list[StuckChat]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ContentErased(BaseModel):
    chat_id: str
    texts_erased: int = Field(description="Message texts removed by this call (0 when already erased).")


def errors(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a route may answer."""
    text = {404: "No such chat or assignment.", 409: "The chat or assignment is not in a state that allows it."}
    return error_entries(text, *codes)


async def _body(request: Request, model: type[BaseModel]):
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise validation_error(field_errors(exc)) from None


async def _assigner(request: Request) -> Assigner:
    return request.app.state.assigner


async def _batcher(request: Request) -> OperatorBatcher:
    return request.app.state.batcher


def _json(model: type[BaseModel], body: dict) -> Response:
    """The body checked against its response model and encoded by pydantic-core in one step.

    (Returning a Response skips FastAPI's generic serialisation and the stdlib JSON encoder on the
    operators' hot routes; the route's response_model still documents it.)
    """
    return Response(model.model_validate(body).model_dump_json(), media_type="application/json")


# The answer to each refusal of the domain (docs/contract.md): status and error code.
DOMAIN_ERRORS: dict[type[domain.DomainError], tuple[int, str]] = {
    domain.UnknownChat: (404, "chat_not_found"),
    domain.UnknownAssignment: (404, "assignment_not_found"),
    domain.NotYourAssignment: (403, "not_your_assignment"),
    domain.AssignmentNotActive: (409, "assignment_not_active"),
    domain.ChatIsCompleted: (409, "chat_completed"),
    domain.OperatorAtCapacity: (409, "operator_at_capacity"),
    domain.InvalidCommand: (422, "invalid_command"),
    routing.OperatorUnavailable: (409, "operator_unavailable"),
    routing.UnknownQueue: (422, "unknown_queue"),
    routing.UnknownOperator: (404, "operator_not_found"),
    routing.QueueLimit: (409, "queue_limit"),
    routing.DefaultQueueKept: (409, "default_queue"),
    domain.DomainError: (409, "conflict"),
}


def domain_error(exc: domain.DomainError) -> ApiError:
    """The API's answer to a domain refusal (its nearest mapped class; a bare conflict otherwise)."""
    status, code = next(DOMAIN_ERRORS[k] for k in type(exc).__mro__ if k in DOMAIN_ERRORS)
    return ApiError(status, code, str(exc))


def _assignment_body(assigner: Assigner, pulled: Pulled, chat: dict) -> dict:
    # A new assignment carries its queue's idle override; a current one reads its queue's.
    idle_s = pulled.idle_timeout_s or chat.get("queue_idle_timeout_s") or assigner.settings.idle_timeout_s
    return {
        "assignment_id": pulled.assignment_id,
        "chat": chat,
        "assigned_at": pulled.assigned_at,
        "idle_deadline": pulled.assigned_at + timedelta(seconds=idle_s),
    }


NO_CONTENT = {204: {"description": "Nothing is waiting for this operator."}}
PULL_PATH = "/v1/assignments/next"
UNAVAILABLE = error_entries({409: "The operator is away or offline (`operator_unavailable`)."}, 409)


@router.post(
    PULL_PATH,
    response_model=AssignmentOut,
    responses={**NO_CONTENT, **UNAVAILABLE},
    tags=["operator"],
    summary="Pull the next chat (retry-safe: at capacity, returns the current assignment).",
)
async def pull_next(request: Request, me: Principal = Depends(require("operator"))) -> Response:
    """Declared here for OpenAPI; requests are served by `pull_next_hot` (the same code, no dependency solving)."""
    return await pull(request, me)


async def pull_next_hot(request: Request, params: dict[str, str]) -> Response:
    """`pull_next` as a HotRoute (shared.http): the token checked as `require("operator")` does, then the pull."""
    return await pull(request, await authorize(request, "operator"))


HOT_ROUTES = (HotRoute("POST", PULL_PATH, pull_next_hot),)


async def pull(request: Request, me: Principal) -> Response:
    """The operator's next chat (or its current one): 200 with the assignment, or 204."""
    assigner: Assigner = request.app.state.assigner
    batcher: OperatorBatcher = request.app.state.batcher
    started = time.perf_counter()
    try:
        pulled, view = await batcher.pull(me.sub)
    except domain.DomainError as exc:
        raise domain_error(exc) from None
    result = "assigned" if pulled.new else ("current" if pulled.assignment_id else "empty")
    metrics.PULL_LATENCY.labels(result).observe(time.perf_counter() - started)
    if pulled.assignment_id is None:
        return Response(status_code=204)
    return _json(AssignmentOut, _assignment_body(assigner, pulled, view))


@router.get(
    "/v1/assignments/current",
    response_model=AssignmentOut,
    responses=NO_CONTENT,
    tags=["operator"],
    summary="The caller's current assignment.",
)
async def current(assigner: Assigner = Depends(_assigner), me: Principal = Depends(require("operator"))):
    pulled = await assigner.current(me.sub)
    if pulled.assignment_id is None:
        return Response(status_code=204)
    return _assignment_body(assigner, pulled, await assigner.chat_view(pulled.chat_id))


@router.post(
    "/v1/assignments/{assignment_id}/release",
    response_model=ReleasedOut,
    tags=["operator"],
    summary="Hand the chat back to the queue (it keeps its place).",
    responses=errors(404, 409),
)
async def release(
    assignment_id: uuid.UUID, batcher: OperatorBatcher = Depends(_batcher), me: Principal = Depends(require("operator"))
):
    try:
        chat_id = await batcher.release(me.sub, assignment_id)
    except domain.DomainError as exc:
        raise domain_error(exc) from None
    return _json(ReleasedOut, {"assignment_id": assignment_id, "chat_id": chat_id, "status": "released"})


@router.post(
    "/v1/assignments/{assignment_id}/complete",
    response_model=ReleasedOut,
    tags=["operator"],
    summary="Complete the chat of the caller's active assignment.",
    responses=errors(404, 409),
)
async def complete_assignment(
    assignment_id: uuid.UUID, batcher: OperatorBatcher = Depends(_batcher), me: Principal = Depends(require("operator"))
):
    try:
        chat_id = await batcher.complete(me.sub, assignment_id)
    except domain.DomainError as exc:
        raise domain_error(exc) from None
    return _json(ReleasedOut, {"assignment_id": assignment_id, "chat_id": chat_id, "status": "completed"})


@router.get(
    "/v1/chats/{chat_id}",
    response_model=ChatOut,
    tags=["operator"],
    summary="A chat with its messages (its assigned operator, or an admin).",
    responses=errors(404),
)
async def chat(
    chat_id: str, assigner: Assigner = Depends(_assigner), me: Principal = Depends(require("operator", "admin"))
):
    view = await assigner.chat_view(chat_id)
    if view is None:
        raise ApiError(404, "chat_not_found", f"chat {chat_id} does not exist")
    if me.role != "admin" and view["assigned_operator_id"] != me.sub:
        raise ApiError(403, "not_your_chat", f"chat {chat_id} is not assigned to you")
    return view


@router.post(
    "/v1/admin/chats/{chat_id}/reassign",
    response_model=AssignmentOut,
    tags=["admin"],
    summary="Give a chat to an operator; a current assignment ends as reassigned.",
    responses=errors(404, 409),
    openapi_extra=json_body(ReassignIn),
)
async def reassign(
    chat_id: str, request: Request, assigner: Assigner = Depends(_assigner), _: Principal = Depends(require("admin"))
):
    # The body is read here, after the token was checked: docs/contract.md §4 wants 401 before any 422.
    body = await _body(request, ReassignIn)
    try:
        assigned, view = await assigner.reassign(chat_id, body.operator_id)
    except domain.DomainError as exc:
        raise domain_error(exc) from None
    return _json(AssignmentOut, _assignment_body(assigner, assigned, view))


@router.post(
    "/v1/admin/chats/{chat_id}/complete",
    response_model=ChatOut,
    tags=["admin"],
    summary="Complete a chat in any state.",
    responses=errors(404, 409),
)
async def admin_complete(
    chat_id: str, assigner: Assigner = Depends(_assigner), me: Principal = Depends(require("admin"))
):
    try:
        return _json(ChatOut, await assigner.admin_complete(me.sub, chat_id))
    except domain.DomainError as exc:
        raise domain_error(exc) from None


@router.get(
    "/v1/admin/queue",
    response_model=QueueOut,
    tags=["admin"],
    summary="Chats per state, oldest waiting age, active assignments and who holds them.",
)
async def queue(assigner: Assigner = Depends(_assigner), _: Principal = Depends(require("admin"))):
    return await assigner.queue_summary()


@router.get(
    "/v1/admin/stuck-chats",
    response_model=StuckChatsPage,
    tags=["admin"],
    summary="Chats waiting or assigned for longer than older_than_s seconds, oldest first, one page.",
)
async def stuck(
    older_than_s: float = Query(300, ge=0, le=30 * 86400),
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
    assigner: Assigner = Depends(_assigner),
    _: Principal = Depends(require("admin")),
):
    after = _stuck_key(decode_cursor(STUCK_CURSOR, cursor, 2))
    rows, resume = await assigner.stuck_chats(older_than_s, limit, after)
    next_cursor = encode_cursor(STUCK_CURSOR, [resume[0].isoformat(), resume[1]]) if resume else None
    return {"chats": rows, "next_cursor": next_cursor}


def _stuck_key(key: list[str] | None) -> tuple[datetime, str] | None:
    if key is None:
        return None
    try:
        since = datetime.fromisoformat(key[0])
    except ValueError:
        raise invalid_cursor() from None
    if since.tzinfo is None:
        raise invalid_cursor()
    return since, key[1]


@router.delete(
    "/v1/admin/chats/{chat_id}/content",
    response_model=ContentErased,
    tags=["admin"],
    summary="Erase a chat's message texts everywhere Switchboard stores them; counts stay exact.",
    responses=errors(404),
)
async def erase_content(
    chat_id: str, assigner: Assigner = Depends(_assigner), _: Principal = Depends(require("admin"))
):
    if not re.match(ID_PATTERN, chat_id):  # no event can carry such an id: no such chat
        raise ApiError(404, "chat_not_found", f"chat {chat_id!r} does not exist")
    try:
        erased = await assigner.erase_chat_content(chat_id)
    except domain.DomainError as exc:
        raise domain_error(exc) from None
    return {"chat_id": chat_id, "texts_erased": erased}


@router.get("/v1/console/config", tags=["console"], summary="Where the console finds ingest, stats and delivery.")
async def console_config(request: Request):
    settings = request.app.state.settings
    return {"ingest_url": settings.ingest_url, "stats_url": settings.stats_url, "delivery_url": settings.delivery_url}


def mount_console(app: FastAPI) -> None:
    """Serve the operator console and admin page (plain HTML + JS) under /console/."""
    if STATIC.is_dir():
        app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
