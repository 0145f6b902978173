"""Routing rules as pure functions (docs/contract.md "Routing"): queues, operator profiles, eligibility,
rank, anti-repeat with a queue's cooldown, per-operator capacity and presence.

Part of the assigner's domain (no I/O, no clock). With no configuration every chat is in `default`
with priority 0 and no skills, and every operator is a profile-less member of `default`: the rules
below then reduce to the FIFO of §3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.assigner.domain import WAITING, Chat, DomainError, Route
from shared.events import DEFAULT_QUEUE, Routing

MAX_QUEUES = 500


class OperatorUnavailable(DomainError):
    """The operator is away or offline: it may not pull."""


class UnknownQueue(DomainError):
    """A command names a queue that does not exist."""


class UnknownOperator(DomainError):
    """A command names an operator without a profile."""


class QueueLimit(DomainError):
    """Creating the queue would pass MAX_QUEUES."""


class DefaultQueueKept(DomainError):
    """The `default` queue cannot be deleted."""


@dataclass(frozen=True)
class Queue:
    """A queue's settings (the `default` queue's when nothing else is configured)."""

    queue_id: str = DEFAULT_QUEUE
    name: str = "Default"
    priority_step_s: int = 60
    sla_first_assignment_s: int = 60
    skills_relax_after_s: int | None = None
    idle_timeout_s: int | None = None
    repeat_cooldown_s: int | None = None


@dataclass(frozen=True)
class Profile:
    """An operator's routing profile; `capacity` None means SWITCHBOARD_OPERATOR_CAPACITY."""

    operator_id: str
    display_name: str = ""
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    skills: frozenset[str] = frozenset()
    capacity: int | None = None
    status: str = "available"


def default_profile(operator_id: str) -> Profile:
    """What an operator without a profile is: a member of `default`, no skills, default capacity, available."""
    return Profile(operator_id)


def capacity_of(profile: Profile, default_capacity: int) -> int:
    """The operator's own capacity, or the configured default."""
    return default_capacity if profile.capacity is None else profile.capacity


def check_may_pull(profile: Profile) -> None:
    """Presence: only an available operator pulls (away keeps its chats; offline has none)."""
    if profile.status != "available":
        raise OperatorUnavailable(f"operator {profile.operator_id} is {profile.status}")


def rank_of(waiting_since: datetime, priority: int, priority_step_s: int) -> datetime:
    """A waiting chat's place: waiting_since - priority x step, lowest first (priority with aging)."""
    return waiting_since - timedelta(seconds=priority * priority_step_s)


def rank_key(chat: Chat) -> tuple[datetime, str]:
    """Queue order of candidates: rank (waiting_since when unknown), then chat id."""
    at = chat.rank or chat.waiting_since
    assert at is not None, "a waiting chat has a queue position"
    return at, chat.chat_id


def relaxed_before(queue: Queue, now: datetime) -> datetime | None:
    """Chats of this queue waiting since at or before this may go to operators lacking their skills."""
    if queue.skills_relax_after_s is None:
        return None
    return now - timedelta(seconds=queue.skills_relax_after_s)


def eligible(chat: Chat, profile: Profile, queue: Queue | None, now: datetime) -> bool:
    """The chat's queue is one of the operator's, and it has the chat's skills (or they were relaxed)."""
    if chat.queue_id not in profile.queues:
        return False
    if set(chat.skills) <= profile.skills:
        return True
    cutoff = relaxed_before(queue, now) if queue is not None else None
    return cutoff is not None and chat.waiting_since is not None and chat.waiting_since <= cutoff


def cooldown_of(queue: Queue | None, default_s: float) -> float:
    """The anti-repeat cooldown of a queue: its override, or the configured one."""
    if queue is None or queue.repeat_cooldown_s is None:
        return default_s
    return queue.repeat_cooldown_s


def may_take(chat: Chat, profile: Profile, queues: dict[str, Queue], now: datetime, default_cooldown_s: float) -> bool:
    """Eligibility plus invariant 3 with the queue's cooldown."""
    if chat.state != WAITING:
        return False
    queue = queues.get(chat.queue_id)
    if not eligible(chat, profile, queue, now):
        return False
    if chat.last_operator_id != profile.operator_id:
        return True
    cooldown = timedelta(seconds=cooldown_of(queue, default_cooldown_s))
    return chat.queued_at is not None and now - chat.queued_at >= cooldown


def match(
    pullers: list[Profile],
    candidates: list[Chat],
    queues: dict[str, Queue],
    now: datetime,
    default_cooldown_s: float,
) -> list[Chat | None]:
    """Give each puller, in arrival order, the first candidate (they come in rank order) it may take, or None.

    Each candidate goes to at most one puller; one a puller may not take stays for the next ones.
    """
    taken: set[str] = set()
    out: list[Chat | None] = []
    for profile in pullers:
        pick = next(
            (c for c in candidates if c.chat_id not in taken and may_take(c, profile, queues, now, default_cooldown_s)),
            None,
        )
        if pick is not None:
            taken.add(pick.chat_id)
        out.append(pick)
    return out


@dataclass(frozen=True)
class Lane:
    """Waiting chats of one queue with one skill set: one index probe of the pull."""

    queue_id: str
    skills: tuple[str, ...]
    head: datetime | None = None  # the lane's lowest rank when it was scanned


@dataclass(frozen=True)
class LaneClaim:
    """What to lock in a lane: up to `limit` chats, only those waiting since `relaxed_before` if set."""

    lane: Lane
    limit: int
    relaxed_before: datetime | None


def _reaches(lane: Lane, profile: Profile, queue: Queue | None, now: datetime) -> tuple[bool, bool]:
    """Whether the operator reaches the lane at all, and whether it has the lane's skills."""
    if lane.queue_id not in profile.queues:
        return False, False
    if set(lane.skills) <= profile.skills:
        return True, True
    return (queue is not None and relaxed_before(queue, now) is not None), False


def claims(
    lanes: Iterable[Lane], pullers: list[Profile], queues: dict[str, Queue], now: datetime, slack: int
) -> list[LaneClaim]:
    """The lanes worth locking for these pullers, each with how many chats to lock.

    Each puller's best lanes by head rank, at most (pullers + slack) of them: a lane behind that many
    better heads cannot hold one of the batch's best (pullers + slack) chats, so the pull locks a few
    rows per puller however many lanes there are. A lane is claimed up to (pullers reaching it +
    slack) chats; whole when one of them has its skills, else only up to the queue's relaxation cutoff.
    """
    lanes = list(lanes)
    wanted = len(pullers) + slack
    reach: dict[Lane, list[bool]] = {lane: [] for lane in lanes}
    chosen: set[Lane] = set()
    for profile in pullers:
        mine = []
        for lane in lanes:
            reaches, full = _reaches(lane, profile, queues.get(lane.queue_id), now)
            if reaches:
                reach[lane].append(full)
                mine.append(lane)
        mine.sort(key=lambda lane: (lane.head is None, lane.head or now))
        chosen.update(mine[:wanted])
    out = []
    for lane in lanes:
        if lane not in chosen:
            continue
        full = any(reach[lane])
        queue = queues.get(lane.queue_id)
        cutoff = None if full or queue is None else relaxed_before(queue, now)
        out.append(LaneClaim(lane, min(len(reach[lane]) + slack, wanted), cutoff))
    return out


def fallback_claims(
    lanes: Iterable[Lane], profile: Profile, queues: dict[str, Queue], now: datetime
) -> list[LaneClaim]:
    """One chat from every lane the operator reaches: its pull's spare-candidate fallback (rare)."""
    out = []
    for lane in lanes:
        queue = queues.get(lane.queue_id)
        reaches, full = _reaches(lane, profile, queue, now)
        if reaches:
            out.append(LaneClaim(lane, 1, None if full or queue is None else relaxed_before(queue, now)))
    return out


def queues_of(pullers: Iterable[Profile]) -> list[str]:
    """Every queue some puller is a member of, sorted."""
    return sorted({q for p in pullers for q in p.queues})


def resolve(routing: Routing | None, known_queues: set[str]) -> Route | None:
    """A user message's routing as a Route: a queue that does not exist falls back to `default`."""
    if routing is None:
        return None
    queue, requested = routing.queue, None
    if queue is not None and queue not in known_queues:
        queue, requested = DEFAULT_QUEUE, queue
    skills = tuple(routing.skills) if routing.skills is not None else None
    return Route(queue_id=queue, priority=routing.priority, skills=skills, requested_queue=requested)


def check_profile_queues(queues: Iterable[str], known: set[str]) -> None:
    """An operator profile may only name queues that exist."""
    missing = sorted(set(queues) - known)
    if missing:
        raise UnknownQueue(f"no such queue: {', '.join(missing)}")


def check_queue_room(exists: bool, count: int) -> None:
    """A new queue fits under MAX_QUEUES."""
    if not exists and count >= MAX_QUEUES:
        raise QueueLimit(f"at most {MAX_QUEUES} queues")


def check_deletable(queue_id: str) -> None:
    """`default` stays."""
    if queue_id == DEFAULT_QUEUE:
        raise DefaultQueueKept("the default queue cannot be deleted")
