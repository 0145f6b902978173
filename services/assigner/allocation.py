"""Allocation of operators' pulls, as pure functions: who has room, which chats compete, who gets which.

Part of the assigner's domain (no I/O, no clock): `usecases.OperatorCommands` loads the pullers'
active assignments and the claimed waiting chats, and applies what these functions decide. Invariant 3
(docs/contract.md §3): an operator gets back a chat it had last only after the repeat cooldown since it was queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.assigner import routing
from services.assigner.domain import WAITING, Chat


@dataclass(frozen=True)
class Held:
    """One of an operator's active assignments."""

    assignment_id: uuid.UUID
    chat_id: str
    started_at: datetime


def may_pull(chat: Chat, operator_id: str, now: datetime, cooldown_s: float) -> bool:
    """Invariant 3: the last operator gets a chat back only after the cooldown since it was queued."""
    if chat.state != WAITING:
        return False
    if chat.last_operator_id != operator_id:
        return True
    return chat.queued_at is not None and now - chat.queued_at >= timedelta(seconds=cooldown_s)


def match_pullers(pullers: list[str], candidates: list[Chat], now: datetime, cooldown_s: float) -> list[Chat | None]:
    """Give each puller, in arrival order, the oldest candidate it may take (invariant 3), or None.

    The unrouted case of routing.match (profile-less operators, chats of `default` without skills).
    """
    profiles = [routing.default_profile(op) for op in pullers]
    return routing.match(profiles, candidates, {}, now, cooldown_s)


def with_room(pullers: list[str], held: dict[str, int], capacity: int | Mapping[str, int]) -> list[bool]:
    """Capacity accounting of a batch of pulls in arrival order: a pull with room takes one place.

    `held` counts each operator's active assignments (those this batch ended excluded); `capacity` is
    one for all or each operator's own.
    """
    counts = dict(held)
    room = []
    for operator_id in pullers:
        limit = capacity if isinstance(capacity, int) else capacity[operator_id]
        fits = counts.get(operator_id, 0) < limit
        if fits:
            counts[operator_id] = counts.get(operator_id, 0) + 1
        room.append(fits)
    return room


def current_of(held: list[Held]) -> Held | None:
    """What a pull at capacity answers (retry-safe): the operator's oldest active assignment."""
    return min(held, key=lambda h: (h.started_at, h.assignment_id)) if held else None


def pull_candidates(claimed: list[Chat], pending: Iterable[Chat]) -> list[Chat]:
    """The chats a batch of pulls competes for, in rank order (oldest first when unrouted).

    `claimed` were locked from the queue; `pending` are the chats this batch already changed (not yet
    written): those put back to the queue (released) compete too, at the place they kept, and this
    batch's version of a chat wins over the stored one.
    """
    changed = {c.chat_id: c for c in pending}
    merged = [c for c in claimed if c.chat_id not in changed] + [c for c in changed.values() if c.state == WAITING]
    return sorted(merged, key=routing.rank_key)


def cooled_before(now: datetime, cooldown_s: float) -> datetime:
    """Invariant 3 as a bound: a chat queued at or before this may go back to its last operator."""
    return now - timedelta(seconds=cooldown_s)


def looks_further(pick: Chat | None, claimed: int, limit: int) -> bool:
    """The spare-candidate fallback: a puller left without a chat while the claim came back full may
    find one further down the queue (every candidate was its own recent chat); otherwise nothing waits."""
    return pick is None and claimed >= limit
