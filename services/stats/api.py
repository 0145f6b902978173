"""Stats HTTP API (docs/contract.md §4): an admin sees every figure, an operator only its own."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from services.stats.domain import FIRST_WAIT_BOUNDS_S, FIRST_WAIT_BUCKETS, sla_attainment
from services.stats.store import Store
from shared.auth import Principal, require
from shared.errors import ApiError
from shared.events import ID_PATTERN, SLUG_PATTERN, operator_id_problem, utcnow
from shared.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, decode_cursor, encode_cursor

router = APIRouter(tags=["stats"])
OPERATORS_CURSOR = "stats.operators"
QUEUES_CURSOR = "stats.queues"

DAY_DESCRIPTION = "A UTC calendar day, YYYY-MM-DD; omitted: all time."
DayParam = Annotated[str | None, Query(description=DAY_DESCRIPTION, examples=["2025-01-31"])]
QueueDayParam = Annotated[
    str | None, Query(description="A UTC calendar day, YYYY-MM-DD; omitted: today (UTC).", examples=["2025-01-31"])
]


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


class FirstWaitHistogram(BaseModel):
    """First-assignment waits per bucket: `counts[i]` waited at most `bounds_s[i]` s (and more than the bound before)."""

    bounds_s: list[int] = Field(description="Upper bounds in seconds, inclusive; fixed for every queue and day.")
    counts: list[int] = Field(description="Per bucket, not cumulative; one more than `bounds_s`: the last is above it.")


class QueueStats(BaseModel):
    """One queue's figures for a UTC day (docs/stats.md, "Per queue")."""

    queue_id: str
    day: date
    queued: int = Field(description="Chats that entered the queue (chat_queued, day of queued_at).")
    assigned: int = Field(description="Assignments started from it, reassigns included (day of assigned_at).")
    answered: int = Field(description="Chats an operator answered (chat_answered, day of answered_at).")
    completed: int = Field(description="Chats completed (chat_completed, day of completed_at).")
    first_wait_count: int = Field(description="First assignments since a chat was opened or reopened.")
    first_wait_ms_sum: int = Field(description="Sum of their waits (queued to first assignment), in ms.")
    sla_met: int = Field(description="First assignments within the queue's sla_first_assignment_s.")
    sla_attainment: float | None = Field(description="sla_met / first_wait_count; null with no first assignment.")
    first_wait_histogram: FirstWaitHistogram


class QueueStatsList(BaseModel):
    """The queues with figures on a UTC day, sorted by id."""

    day: date
    queues: list[QueueStats]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


def queue_stats(row: dict) -> dict:
    """A queue_daily row (or zeros) as the API shows it: the histogram gathered, the attainment computed."""
    out = {k: v for k, v in row.items() if k not in FIRST_WAIT_BUCKETS}
    out["sla_attainment"] = sla_attainment(row["first_wait_count"], row["sla_met"])
    out["first_wait_histogram"] = {
        "bounds_s": list(FIRST_WAIT_BOUNDS_S),
        "counts": [row[name] for name in FIRST_WAIT_BUCKETS],
    }
    return out


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


@router.get(
    "/v1/stats/queues",
    response_model=QueueStatsList,
    summary="Every queue's figures for a UTC day, default today (admin).",
)
async def queues_stats(
    day: QueueDayParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
    principal: Principal = Depends(require("admin")),
    store: Store = Depends(_store),
):
    """The queues that have figures on the day, sorted by id, one page at a time."""
    parsed = parse_day(day) or utcnow().date()
    after = decode_cursor(QUEUES_CURSOR, cursor, 1)
    rows, resume = await store.queues(parsed, limit, after[0] if after else None)
    next_cursor = encode_cursor(QUEUES_CURSOR, [resume]) if resume is not None else None
    return {"day": parsed, "queues": [queue_stats(r) for r in rows], "next_cursor": next_cursor}


# Stats does not own queues (the assigner does): a queue it has no figures for, known to the
# assigner or not, reads as zeros, never 404, like an operator or a chat stats has not seen.
@router.get(
    "/v1/queues/{queue_id}/stats",
    response_model=QueueStats,
    summary="One queue's figures for a UTC day, default today (admin); zeros for a queue without figures.",
)
async def one_queue_stats(
    queue_id: Annotated[str, Path(pattern=SLUG_PATTERN, description="The queue id (a slug).")],
    day: QueueDayParam = None,
    principal: Principal = Depends(require("admin")),
    store: Store = Depends(_store),
):
    """Queued, assigned, answered, completed, first-assignment waits and SLA attainment of one queue."""
    parsed = parse_day(day) or utcnow().date()
    return queue_stats(await store.queue(queue_id, parsed))
