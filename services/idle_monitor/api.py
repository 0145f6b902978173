"""HTTP routes of the idle monitor: an admin view of the armed deadlines."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from shared.auth import Principal, require
from shared.events import utcnow

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class ArmedTimer(BaseModel):
    """One armed idle deadline."""

    assignment_id: uuid.UUID
    chat_id: str
    operator_id: str
    assigned_at: datetime
    deadline: datetime
    armed_at: datetime
    overdue_s: float = Field(description="Seconds past the deadline (0 while it is still ahead).")


class ArmedTimers(BaseModel):
    """The armed deadlines, soonest first."""

    armed: int = Field(description="Every deadline armed now, also those beyond `limit`.")
    timers: list[ArmedTimer]


@router.get("/timers", response_model=ArmedTimers, summary="Armed idle deadlines, soonest first.")
async def list_timers(
    request: Request,
    limit: int = Query(100, ge=1, le=1000, description="At most this many timers."),
    _: Principal = Depends(require("admin")),
) -> ArmedTimers:
    """List the armed idle deadlines (admin only)."""
    store = request.app.state.store
    rows = await store.list_armed(limit)
    now = utcnow()
    timers = [ArmedTimer(**dict(r), overdue_s=max(0.0, (now - r["deadline"]).total_seconds())) for r in rows]
    return ArmedTimers(armed=await store.count_armed(), timers=timers)
