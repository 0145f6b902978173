"""Delivery HTTP API (docs/contract.md §9): chat tokens, the chat and operator streams (SSE), and the demo widget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from services.delivery import domain, streams
from shared.auth import Principal, issue_token, principal_of, require
from shared.errors import ApiError
from shared.events import ID_PATTERN

router = APIRouter(tags=["delivery"])
STATIC = Path(__file__).parent / "static"
ChatId = Annotated[str, PathParam(pattern=ID_PATTERN, description="The chat.")]


class ChatToken(BaseModel):
    """A short-lived token with which a browser reads this chat's stream and posts its user messages."""

    chat_id: str
    token: str
    expires_in: int = Field(description="Seconds of validity.")
    expires_at: int = Field(description="Expiry, Unix seconds.")


def _mint(request: Request, chat_id: str) -> ChatToken:
    ttl = request.app.state.settings.delivery_chat_token_ttl_s
    token = issue_token(request.app.state.auth_secret, chat_id, "chat", ttl)
    return ChatToken(chat_id=chat_id, token=token, expires_in=ttl, expires_at=int(time.time()) + ttl)


@router.post(
    "/v1/chats/{chat_id}/token",
    response_model=ChatToken,
    summary="Mint a chat token (role `chat`, sub = chat id) for the user's browser.",
)
async def chat_token(request: Request, chat_id: ChatId, _: Principal = Depends(require("frontend"))) -> ChatToken:
    """A frontend's backend asks for it and hands it to the user's widget."""
    return _mint(request, chat_id)


@dataclass(frozen=True)
class Reader:
    """Who opens a stream, and until when its token is valid (Unix time)."""

    principal: Principal
    expires_at: float


async def _stream_reader(
    request: Request,
    access_token: Annotated[
        str | None, Query(description="The bearer token, for EventSource (which cannot set headers).")
    ] = None,
) -> Reader:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" and token.strip() else access_token
    if not token:
        raise ApiError(401, "missing_token", "an `Authorization: Bearer <token>` header or `access_token` is required")
    principal = await principal_of(request, token)
    # Signature and expiry were just checked: read the expiry only, to end the stream with the token.
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    return Reader(principal, float(exp))


def _resume_point(header: str | None, query: str | None) -> int:
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is True; int() refuses it
        raise ApiError(
            422,
            "validation_error",
            f"Last-Event-ID: {raw[:40]!r} is not an event id of this stream",
            details=[{"field": "Last-Event-ID", "message": "expected a non-negative integer", "type": "int"}],
        )
    return int(raw)


async def _resume(
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[
        str | None, Query(alias="last_event_id", description="Resume point when no Last-Event-ID header is sent.")
    ] = None,
) -> int:
    """Where a stream resumes: the Last-Event-ID header, else the query (EventSource cannot set headers)."""
    return _resume_point(last_event_id, last_event_id_query)


@router.get(
    "/v1/chats/{chat_id}/stream",
    summary="The chat's events as Server-Sent Events.",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`message`, `operator_joined` and `chat_completed` events; "
            "each `id` is the chat's sequence number.",
        }
    },
)
async def chat_stream(
    request: Request,
    chat_id: ChatId,
    reader: Reader = Depends(_stream_reader),
    resume: int = Depends(_resume),
):
    """Replays the chat's events after Last-Event-ID (or from the start of the window), then streams new ones."""
    me = reader.principal
    if me.role == "chat":
        if me.sub != chat_id:
            raise ApiError(403, "forbidden_chat", "a chat token may read only its own chat's stream")
    elif me.role != "frontend":
        raise ApiError(403, "forbidden_role", f"role {me.role!r} may not call this; needs frontend or chat")
    return await _sse(request, domain.chat_stream(chat_id), resume, reader)


@router.get(
    "/v1/operators/me/stream",
    summary="The calling operator's events as Server-Sent Events.",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`message` (on a chat I hold), `assignment_started`, `assignment_ended` "
            "(with its outcome); each `id` is the operator stream's sequence number. And `queue_depth` "
            "(`queue_id`, `waiting`; no `id`) for each of my queues: once when the stream opens, then "
            "when it changes, at most once a second per queue.",
        }
    },
)
async def operator_stream(
    request: Request,
    reader: Reader = Depends(_stream_reader),
    resume: int = Depends(_resume),
):
    """New messages on the chats I hold, my assignments starting and ending (resumable like the chat stream), my queues' depth."""
    me = reader.principal
    if me.role != "operator":
        raise ApiError(403, "forbidden_role", f"role {me.role!r} may not call this; needs operator")
    return await _sse(request, domain.operator_stream(me.sub), resume, reader, domain.operator_queues(me.sub))


async def _sse(
    request: Request, stream: str, after: int, reader: Reader, queues: tuple[str, ...] = ()
) -> EventSourceResponse:
    state = request.app.state
    if after:
        last = await state.store.last_seq(stream)
        if after > last:
            raise ApiError(
                422,
                "validation_error",
                f"Last-Event-ID {after} is ahead of this stream (last id {last})",
                details=[{"field": "Last-Event-ID", "message": f"at most {last}", "type": "range"}],
            )
    events = streams.stream_events(state.hub, state.store, stream, after, until=reader.expires_at, queues=queues)
    return EventSourceResponse(
        events,
        ping=state.settings.delivery_heartbeat_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class WidgetTokenIn(BaseModel):
    """The chat the demo widget plays the user of."""

    chat_id: str = Field(pattern=ID_PATTERN)


@router.get("/widget/config", tags=["widget"], summary="Where the demo widget finds ingest.")
async def widget_config(request: Request):
    """The ingest URL as browsers reach it, and whether the dev token endpoint is on."""
    settings = request.app.state.settings
    return {"ingest_url": settings.ingest_url, "dev_tokens": settings.dev_mode}


@router.post(
    "/widget/token",
    tags=["widget"],
    response_model=ChatToken,
    summary="Development only: a chat token for the demo widget, without a frontend token.",
)
async def widget_token(request: Request, body: WidgetTokenIn) -> ChatToken:
    """Only with SWITCHBOARD_DEV_MODE=1; a real site mints chat tokens in its backend."""
    if not request.app.state.settings.dev_mode:
        raise ApiError(404, "not_found", "the widget's token endpoint exists only in development mode")
    return _mint(request, body.chat_id)


def mount_widget(app: FastAPI) -> None:
    """Serve the demo chat widget (plain HTML + JS) under /widget/."""
    if STATIC.is_dir():
        app.mount("/widget", StaticFiles(directory=STATIC, html=True), name="widget")
