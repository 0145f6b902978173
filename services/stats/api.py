"""Stats HTTP API (docs/contract.md §4): an admin sees every figure, an operator only its own."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from services.stats.store import Store
from shared.auth import Principal, require
from shared.errors import ApiError
from shared.events import ID_PATTERN, operator_id_problem
from shared.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, decode_cursor, encode_cursor

router = APIRouter(tags=["stats"])
OPERATORS_CURSOR = "stats.operators"

DAY_DESCRIPTION = "A UTC calendar day, YYYY-MM-DD; omitted: all time."
DayParam = Annotated[str | None, Query(description=DAY_DESCRIPTION, examples=["2025-01-31"])]


class OperatorStats(BaseModel):
    """One operator's figures for a UTC day or all time (docs/contract.md §5)."""

    operator_id: str
    assignments: int = Field(description="Assignment records started (day of their start).")
    messages_sent: int = Field(description="Messages the operator wrote (day they were recorded).")
    chats_handled: int = Field(description="Distinct chats the operator wrote at least one message to.")
    answered: int = Field(description="Assignments ended as answered (day they ended).")
    released: int = Field(description="Assignments the operator released.")
    timed_out: int = Field(description="Assignments taken back after the idle timeout.")
    reassigned_away: int = Field(description="Assignments an admin moved to someone else.")
    first_response_count: int = Field(description="Assignments with a first response (day of the response).")
    first_response_ms_sum: int = Field(description="Sum of assignment start to first response, in ms.")


class OperatorStatsList(BaseModel):
    """Every operator seen so far, with its figures for the day (or all time)."""

    day: date | None
    operators: list[OperatorStats]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ChatStats(BaseModel):
    """One chat's figures (zeros for a chat stats has not seen)."""

    chat_id: str
    user_messages: int
    operator_messages: int
    assignments: int


async def _store(request: Request) -> Store:
    return request.app.state.store


def parse_day(value: str | None) -> date | None:
    """A strict YYYY-MM-DD calendar day, or None; anything else is a 422."""
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422,
            "validation_error",
            f"day: {value!r} is not a calendar day in YYYY-MM-DD form",
            details=[{"field": "day", "message": "expected YYYY-MM-DD", "type": "date"}],
        ) from None


# `:path`: an operator id may hold `/` (sent as %2F, which the server decodes before routing), so the
# id is everything between `/v1/operators/` and the final `/stats`.
@router.get(
    "/v1/operators/{operator_id:path}/stats",
    response_model=OperatorStats,
    summary="One operator's figures, for a UTC day or all time (the id URL-encoded, `/` as %2F).",
)
async def operator_stats(
    operator_id: Annotated[str, Path(description="The operator id (a token's `sub`), URL-encoded.")],
    day: DayParam = None,
    principal: Principal = Depends(require("admin", "operator")),
    store: Store = Depends(_store),
):
    """An operator's counters; an operator may only read its own, an admin anyone's."""
    problem = operator_id_problem(operator_id)
    if problem is not None:
        raise ApiError(
            422,
            "validation_error",
            f"operator_id: operator id {problem}",
            details=[{"field": "operator_id", "message": problem, "type": "value_error"}],
        )
    if principal.role == "operator" and principal.sub != operator_id:
        raise ApiError(403, "forbidden", "an operator may read only its own figures")
    return await store.operator(operator_id, parse_day(day))


@router.get(
    "/v1/stats/operators",
    response_model=OperatorStatsList,
    summary="Every operator's figures, for a UTC day or all time (admin).",
)
async def operators_stats(
    day: DayParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
    principal: Principal = Depends(require("admin")),
    store: Store = Depends(_store),
):
    """Every operator stats has seen, sorted by id, one page at a time; zeros on days an operator did nothing."""
    parsed = parse_day(day)
    after = decode_cursor(OPERATORS_CURSOR, cursor, 1)
    rows, resume = await store.operators(parsed, limit, after[0] if after else None)
    next_cursor = encode_cursor(OPERATORS_CURSOR, [resume]) if resume is not None else None
    return {"day": parsed, "operators": rows, "next_cursor": next_cursor}


@router.get("/v1/chats/{chat_id}/stats", response_model=ChatStats, summary="One chat's figures (admin).")
async def chat_stats(
    chat_id: Annotated[str, Path(pattern=ID_PATTERN)],
    principal: Principal = Depends(require("admin")),
    store: Store = Depends(_store),
):
    """User messages, operator messages and assignments of one chat."""
    return await store.chat(chat_id)
