"""Pure timer decisions: which deadlines a batch of lifecycle facts arms or disarms, and what a fire says.

No I/O here. The store applies a `TimerChanges` set-wise; the ticker turns a due `Deadline`
into the `assignment_idle` event it publishes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.events import AssignmentEnded, AssignmentIdle, AssignmentIdlePayload, ChatAssigned, Envelope

PRODUCER = "idle_monitor"
# Fixed namespace: the id of a fire depends only on the assignment, so every repeat of the
# same fire (after a crash between Kafka's ack and the deadline's delete) carries the same id.
IDLE_EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "switchboard:idle_monitor:assignment_idle")


@dataclass(frozen=True)
class Deadline:
    """An armed timer: the assignment's operator must act before `deadline`."""

    assignment_id: uuid.UUID
    chat_id: str
    operator_id: str
    assigned_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class Ended:
    """An assignment that ended; its timer is disarmed and may never be armed again."""

    assignment_id: uuid.UUID
    ended_at: datetime


@dataclass(frozen=True)
class TimerChanges:
    """What one batch of facts does to the timers: deadlines to arm, assignments to disarm."""

    arm: tuple[Deadline, ...] = ()
    disarm: tuple[Ended, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the batch touches no timer."""
        return not self.arm and not self.disarm


def deadline_for(assigned_at: datetime, idle_timeout_s: float) -> datetime:
    """When an assignment started at `assigned_at` goes idle."""
    return assigned_at + timedelta(seconds=idle_timeout_s)


def assignment_timeout_s(fact: ChatAssigned, idle_timeout_s: float) -> float:
    """The idle timeout of an assignment: its queue's override when the fact carries one, else the global one."""
    override = fact.payload.idle_timeout_s
    return idle_timeout_s if override is None else override


def plan_timer_changes(facts: Iterable[Envelope], idle_timeout_s: float) -> TimerChanges:
    """Decide, in partition order, which deadlines a batch of lifecycle facts arms and disarms.

    `idle_timeout_s` is the global timeout; a `chat_assigned` whose queue overrides it carries its
    own `idle_timeout_s`, which sets that assignment's deadline once, at arming: nothing later in the
    assignment (its messages included) moves it. An assignment that ends anywhere in the batch is
    never armed by it, whichever came first; the store's tombstones extend the same rule across batches.
    """
    arm: dict[uuid.UUID, Deadline] = {}
    disarm: dict[uuid.UUID, Ended] = {}
    for fact in facts:
        if isinstance(fact, ChatAssigned):
            p = fact.payload
            if p.assignment_id in disarm or p.assignment_id in arm:
                continue
            arm[p.assignment_id] = Deadline(
                assignment_id=p.assignment_id,
                chat_id=fact.chat_id,
                operator_id=p.operator_id,
                assigned_at=p.assigned_at,
                deadline=deadline_for(p.assigned_at, assignment_timeout_s(fact, idle_timeout_s)),
            )
        elif isinstance(fact, AssignmentEnded):
            e = fact.payload
            arm.pop(e.assignment_id, None)
            disarm.setdefault(e.assignment_id, Ended(e.assignment_id, e.ended_at))
    return TimerChanges(arm=tuple(arm.values()), disarm=tuple(disarm.values()))


def idle_event_id(assignment_id: uuid.UUID) -> uuid.UUID:
    """The event id of an assignment's `assignment_idle`: the same for every repeat of that fire."""
    return uuid.uuid5(IDLE_EVENT_NAMESPACE, str(assignment_id))


def idle_fact(deadline: Deadline) -> AssignmentIdle:
    """The `assignment_idle` event a passed deadline publishes (identical on every repeat)."""
    return AssignmentIdle(
        event_id=idle_event_id(deadline.assignment_id),
        chat_id=deadline.chat_id,
        # The fact is "the operator was still silent at the deadline": it happened then.
        occurred_at=deadline.deadline,
        producer=PRODUCER,
        payload=AssignmentIdlePayload(
            assignment_id=deadline.assignment_id,
            operator_id=deadline.operator_id,
            deadline=deadline.deadline,
        ),
    )


def lateness_s(deadline: Deadline, fired_at: datetime) -> float:
    """How long after its deadline a timer fired (never negative)."""
    return max(0.0, (fired_at - deadline.deadline).total_seconds())
