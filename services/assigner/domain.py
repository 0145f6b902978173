"""The assigner's rules as pure functions: the chat state machine of docs/contract.md §3 (`decide`), the
event-to-command mapping, the ownership and capacity checks, and the allocation of a batch of pulls.

No I/O and no clock here. A use case (usecases.py) loads chats through the repository, calls these
functions with the time it read, and saves the `Changes` (new chats and their facts, the lifecycle
events of docs/contract.md §2) in one transaction. Refusals are the named exceptions below; the HTTP API maps
each to its status and code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from shared.events import (
    DEFAULT_QUEUE,
    AssignmentEndedPayload,
    AssignmentIdle,
    ChatAnsweredPayload,
    ChatAssignedPayload,
    ChatCompletedPayload,
    ChatQueuedPayload,
    ChatReopenedPayload,
    ChatRoutedPayload,
    Envelope,
    MessageRecordedPayload,
    OperatorMessage,
    Outcome,
    QueueReason,
    Sender,
    UserMessage,
    operator_id_problem,
)

T = TypeVar("T")
# The outcomes that put an assignment's chat back in the queue; each is also the queue reason.
RequeueReason = Literal["released", "timed_out"]

WAITING = "waiting_assignment"
ASSIGNED = "assigned"
WAITING_USER = "waiting_real_user_reply"
COMPLETED = "completed"
STATES = (WAITING, ASSIGNED, WAITING_USER, COMPLETED)


class DomainError(Exception):
    """A command that the chat's current state refuses (the API maps each kind to its answer)."""


class UnknownChat(DomainError):
    """The command names a chat that does not exist."""


class UnknownAssignment(DomainError):
    """The command names an assignment that does not exist."""


class NotYourAssignment(DomainError):
    """An operator acts on an assignment held by someone else."""


class AssignmentNotActive(DomainError):
    """The assignment already ended (answered, released, timed out, reassigned or completed)."""


class ChatIsCompleted(DomainError):
    """A completed chat is not reassigned (a user message reopens it)."""


class ChatNotWaiting(DomainError):
    """A pull picked a chat that is no longer waiting."""


class OperatorAtCapacity(DomainError):
    """The operator already holds as many chats as the capacity allows."""


class InvalidCommand(DomainError):
    """A command whose own data the event contract refuses (only its caller hears of it)."""


@dataclass(frozen=True)
class Chat:
    """A chat row plus what the repository knows of its current assignment."""

    chat_id: str
    state: str
    assigned_operator_id: str | None = None
    last_operator_id: str | None = None
    assignment_id: uuid.UUID | None = None
    waiting_since: datetime | None = None
    queued_at: datetime | None = None
    operator_replied_at: datetime | None = None
    last_user_message_at: datetime | None = None
    message_count: int = 0
    created_at: datetime | None = None
    assignment_started_at: datetime | None = None
    assignment_responded: bool = False
    # Routing (docs/contract.md "Routing"): rank is written by the repository from these and the queue.
    queue_id: str = DEFAULT_QUEUE
    priority: int = 0
    skills: tuple[str, ...] = ()
    rank: datetime | None = None
    opened_at: datetime | None = None  # opened or reopened: the first-assignment wait counts from here
    first_assigned_at: datetime | None = None


# The frozen dataclasses below (facts, commands) are alike in shape to other services' own (ingest's
# Key, the idle monitor's Ended): plain records of each domain, with no logic to share.
@dataclass(frozen=True)
class Fact:
    """A lifecycle fact to record and publish: `type` and payload of a chat.lifecycle event."""

    type: str
    payload: object


# ---- commands and incoming events -------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Routing attributes to apply: each one given wins, None keeps the chat's.

    `requested_queue` is set when the queue asked for does not exist and `queue_id` is the fallback.
    """

    queue_id: str | None = None
    priority: int | None = None
    skills: tuple[str, ...] | None = None
    requested_queue: str | None = None


@dataclass(frozen=True)
class ReceiveUserMessage:
    message_id: str
    text: str
    sent_at: datetime | None
    at: datetime
    route: Route | None = None


@dataclass(frozen=True)
class ReceiveOperatorMessage:
    message_id: str
    operator_id: str
    text: str
    sent_at: datetime | None
    at: datetime


@dataclass(frozen=True)
class TimeOutAssignment:
    assignment_id: uuid.UUID
    at: datetime


@dataclass(frozen=True)
class AssignToPuller:
    operator_id: str
    assignment_id: uuid.UUID
    at: datetime
    sla_s: int = 60  # the chat's queue's sla_first_assignment_s
    idle_timeout_s: int | None = None  # the chat's queue's override, if any


@dataclass(frozen=True)
class ReleaseAssignment:
    operator_id: str
    assignment_id: uuid.UUID
    at: datetime


@dataclass(frozen=True)
class CompleteChat:
    by: str
    at: datetime
    assignment_id: uuid.UUID | None = None
    operator_id: str | None = None  # set when an operator completes its own assignment


@dataclass(frozen=True)
class ReassignChat:
    operator_id: str
    assignment_id: uuid.UUID
    at: datetime
    sla_s: int = 60
    idle_timeout_s: int | None = None


@dataclass(frozen=True)
class RouteChat:
    route: Route
    at: datetime
    by: Literal["admin", "queue_deleted"] = "admin"


Command = (
    ReceiveUserMessage
    | ReceiveOperatorMessage
    | TimeOutAssignment
    | AssignToPuller
    | ReleaseAssignment
    | CompleteChat
    | ReassignChat
    | RouteChat
)


@dataclass(frozen=True)
class Decision:
    """The chat after a command (None: nothing changed) and the facts it produced."""

    chat: Chat | None
    facts: list[Fact] = field(default_factory=list)


def response_ms(started_at: datetime, at: datetime) -> int:
    """Whole milliseconds from an assignment's start to a response (floored, like the reconcile SQL)."""
    return (at - started_at) // timedelta(milliseconds=1)


def _present(value: T | None, what: str, chat: Chat) -> T:
    """`value`, which the chat's state guarantees; a None is a broken invariant (a corrupt row or rule).

    ValueError, as the payload's own validation raised before: callers already treat it as this
    command's refusal rather than a failure of the whole batch.
    """
    if value is None:
        raise ValueError(f"chat {chat.chat_id} in state {chat.state} has no {what}")
    return value


def _message(cmd, sender: Sender, chat: Chat, operator_id: str | None, assignment_id, first_ms) -> Fact:
    return Fact(
        "message_recorded",
        MessageRecordedPayload(
            message_id=cmd.message_id,
            sender=sender,
            operator_id=operator_id,
            text=cmd.text,
            sent_at=cmd.sent_at,
            recorded_at=cmd.at,
            assignment_id=assignment_id,
            first_response_ms=first_ms,
        ),
    )


def _queued(reason: QueueReason, chat: Chat) -> Fact:
    return Fact(
        "chat_queued",
        ChatQueuedPayload(
            reason=reason,
            waiting_since=_present(chat.waiting_since, "waiting_since", chat),
            queued_at=_present(chat.queued_at, "queued_at", chat),
            queue_id=chat.queue_id,
        ),
    )


def _ended(chat: Chat, outcome: Outcome, at: datetime) -> Fact:
    return Fact(
        "assignment_ended",
        AssignmentEndedPayload(
            assignment_id=_present(chat.assignment_id, "assignment_id", chat),
            operator_id=_present(chat.assigned_operator_id, "assigned_operator_id", chat),
            outcome=outcome,
            started_at=_present(chat.assignment_started_at, "assignment_started_at", chat),
            ended_at=at,
            queue_id=chat.queue_id,
        ),
    )


def _unassigned(chat: Chat, **changes) -> Chat:
    return replace(
        chat,
        assigned_operator_id=None,
        assignment_id=None,
        assignment_started_at=None,
        assignment_responded=False,
        **changes,
    )


def _requeue(chat: Chat, at: datetime, reason: RequeueReason, last_operator: str | None) -> Decision:
    """Back to the queue keeping its position (release, idle timeout)."""
    new = _unassigned(
        chat, state=WAITING, queued_at=at, last_operator_id=last_operator, waiting_since=chat.waiting_since or at
    )
    return Decision(new, [_ended(chat, reason, at), _queued(reason, new)])


def _routed(chat: Chat, route: Route | None, at: datetime, by, new: bool = False) -> tuple[Chat, list[Fact]]:
    """The chat with the route applied, and its chat_routed fact when something changed (or fell back)."""
    if route is None:
        return chat, []
    routed = replace(
        chat,
        queue_id=route.queue_id if route.queue_id is not None else chat.queue_id,
        priority=route.priority if route.priority is not None else chat.priority,
        skills=route.skills if route.skills is not None else chat.skills,
    )
    same = (routed.queue_id, routed.priority, routed.skills) == (chat.queue_id, chat.priority, chat.skills)
    if same and route.requested_queue is None:
        return chat, []
    payload = ChatRoutedPayload(
        queue_id=routed.queue_id,
        priority=routed.priority,
        skills=list(routed.skills),
        previous_queue_id=None if new else chat.queue_id,
        requested_queue=route.requested_queue,
        by=by,
        routed_at=at,
    )
    return routed, [Fact("chat_routed", payload)]


def on_route(chat: Chat, cmd: RouteChat) -> Decision:
    """An admin (or a queue's deletion) changes a chat's routing; a waiting chat keeps its waiting time."""
    routed, facts = _routed(chat, cmd.route, cmd.at, cmd.by)
    return Decision(routed if facts else None, facts)


def on_user_message(chat: Chat | None, cmd: ReceiveUserMessage, chat_id: str) -> Decision:
    """A user wrote: queue a new or answered chat, reopen a completed one, keep an assigned one."""
    if chat is None:
        new = Chat(
            chat_id=chat_id,
            state=WAITING,
            waiting_since=cmd.at,
            queued_at=cmd.at,
            last_user_message_at=cmd.at,
            message_count=1,
            created_at=cmd.at,
            opened_at=cmd.at,
        )
        new, routed = _routed(new, cmd.route, cmd.at, "user_message", new=True)
        return Decision(new, [_message(cmd, "user", new, None, None, None), *routed, _queued("new", new)])
    counted = replace(chat, message_count=chat.message_count + 1, last_user_message_at=cmd.at)
    counted, routed = _routed(counted, cmd.route, cmd.at, "user_message")
    if chat.state == WAITING:
        return Decision(counted, [_message(cmd, "user", chat, None, None, None), *routed])
    if chat.state == ASSIGNED:
        return Decision(counted, [_message(cmd, "user", chat, None, chat.assignment_id, None), *routed])
    queued = replace(counted, state=WAITING, waiting_since=cmd.at, queued_at=cmd.at)
    facts = [_message(cmd, "user", chat, None, None, None), *routed]
    if chat.state == COMPLETED:
        queued = replace(queued, opened_at=cmd.at, first_assigned_at=None)
        facts.append(Fact("chat_reopened", ChatReopenedPayload(reopened_at=cmd.at)))
        facts.append(_queued("reopened", queued))
    else:
        facts.append(_queued("user_reply", queued))
    return Decision(queued, facts)


def on_operator_message(chat: Chat | None, cmd: ReceiveOperatorMessage, chat_id: str) -> Decision:
    """An operator wrote: the assigned one's reply answers the chat and frees them."""
    op = cmd.operator_id
    queue_id = chat.queue_id if chat is not None else DEFAULT_QUEUE
    answered = Fact("chat_answered", ChatAnsweredPayload(operator_id=op, answered_at=cmd.at, queue_id=queue_id))
    if chat is None:
        # Outreach: an operator writes first; the chat waits for the user.
        new = Chat(
            chat_id=chat_id,
            state=WAITING_USER,
            last_operator_id=op,
            operator_replied_at=cmd.at,
            message_count=1,
            created_at=cmd.at,
        )
        return Decision(new, [_message(cmd, "operator", new, op, None, None), answered])
    counted = replace(chat, message_count=chat.message_count + 1)
    if chat.state == ASSIGNED and chat.assigned_operator_id == op:
        first = (
            None
            if chat.assignment_responded
            else response_ms(_present(chat.assignment_started_at, "assignment_started_at", chat), cmd.at)
        )
        new = _unassigned(counted, state=WAITING_USER, operator_replied_at=cmd.at, last_operator_id=op)
        return Decision(
            new,
            [
                _message(cmd, "operator", chat, op, chat.assignment_id, first),
                _ended(chat, "answered", cmd.at),
                answered,
            ],
        )
    if chat.state == ASSIGNED:
        return Decision(counted, [_message(cmd, "operator", chat, op, None, None)])
    if chat.state == WAITING:
        new = replace(counted, state=WAITING_USER, operator_replied_at=cmd.at, last_operator_id=op)
        return Decision(new, [_message(cmd, "operator", chat, op, None, None), answered])
    if chat.state == WAITING_USER:
        new = replace(counted, operator_replied_at=cmd.at, last_operator_id=op)
        return Decision(new, [_message(cmd, "operator", chat, op, None, None)])
    return Decision(counted, [_message(cmd, "operator", chat, op, None, None)])


def on_timeout(chat: Chat | None, cmd: TimeOutAssignment) -> Decision:
    """An idle timer fired: only the current assignment is taken back; stale timers do nothing."""
    if chat is None or chat.state != ASSIGNED or chat.assignment_id != cmd.assignment_id:
        return Decision(None)
    return _requeue(chat, cmd.at, "timed_out", chat.assigned_operator_id)


def on_pull(chat: Chat, cmd: AssignToPuller) -> Decision:
    """The allocation picked this waiting chat for the puller: assign it."""
    if chat.state != WAITING:
        raise ChatNotWaiting(f"chat {chat.chat_id} is {chat.state}, not waiting")
    new = replace(
        chat,
        state=ASSIGNED,
        assigned_operator_id=cmd.operator_id,
        assignment_id=cmd.assignment_id,
        assignment_started_at=cmd.at,
        assignment_responded=False,
        first_assigned_at=chat.first_assigned_at or cmd.at,
    )
    return Decision(new, [_assigned(chat, cmd, "pull")])


def _assigned(chat: Chat, cmd: AssignToPuller | ReassignChat, via: Literal["pull", "reassign"]) -> Fact:
    """chat_assigned, with the first-assignment wait and SLA on the first since the chat was (re)opened."""
    first_ms = None
    if chat.opened_at is not None and chat.first_assigned_at is None:
        first_ms = max(0, (cmd.at - chat.opened_at) // timedelta(milliseconds=1))
    payload = ChatAssignedPayload(
        assignment_id=cmd.assignment_id,
        operator_id=cmd.operator_id,
        assigned_at=cmd.at,
        via=via,
        queue_id=chat.queue_id,
        first_wait_ms=first_ms,
        sla_met=None if first_ms is None else first_ms <= cmd.sla_s * 1000,
        idle_timeout_s=cmd.idle_timeout_s,
    )
    return Fact("chat_assigned", payload)


def _check_own_active(chat: Chat, operator_id: str, assignment_id: uuid.UUID | None) -> None:
    # assignment_id None (a CompleteChat without one) never matches an assigned chat's: not active.
    if chat.state != ASSIGNED or chat.assignment_id != assignment_id:
        raise AssignmentNotActive(f"assignment {assignment_id} is no longer active")
    if chat.assigned_operator_id != operator_id:
        raise NotYourAssignment(f"assignment {assignment_id} is not yours")


def on_release(chat: Chat, cmd: ReleaseAssignment) -> Decision:
    """The operator hands the chat back: it keeps its queue position; they are its last operator."""
    _check_own_active(chat, cmd.operator_id, cmd.assignment_id)
    return _requeue(chat, cmd.at, "released", cmd.operator_id)


def on_complete(chat: Chat, cmd: CompleteChat) -> Decision:
    """Complete the chat (admin: any state; operator: its own active assignment)."""
    if cmd.operator_id is not None:
        _check_own_active(chat, cmd.operator_id, cmd.assignment_id)
    if chat.state == COMPLETED:
        return Decision(None)
    facts = []
    if chat.state == ASSIGNED:
        facts.append(_ended(chat, "completed", cmd.at))
    new = _unassigned(chat, state=COMPLETED, waiting_since=None, queued_at=None)
    done = ChatCompletedPayload(completed_by=cmd.by, completed_at=cmd.at, queue_id=chat.queue_id)
    facts.append(Fact("chat_completed", done))
    return Decision(new, facts)


def on_reassign(chat: Chat, cmd: ReassignChat) -> Decision:
    """An admin gives the chat to an operator; a current assignment ends as reassigned."""
    if chat.state == COMPLETED:
        raise ChatIsCompleted(f"chat {chat.chat_id} is completed")
    if chat.state == ASSIGNED and chat.assigned_operator_id == cmd.operator_id:
        return Decision(None)
    facts = []
    if chat.state == ASSIGNED:
        facts.append(_ended(chat, "reassigned", cmd.at))
    new = replace(
        chat,
        state=ASSIGNED,
        assigned_operator_id=cmd.operator_id,
        assignment_id=cmd.assignment_id,
        assignment_started_at=cmd.at,
        assignment_responded=False,
        last_operator_id=cmd.operator_id,
        first_assigned_at=chat.first_assigned_at or cmd.at,
    )
    facts.append(_assigned(chat, cmd, "reassign"))
    return Decision(new, facts)


def decide(chat: Chat | None, cmd: Command, chat_id: str | None = None) -> Decision:
    """Apply one command or event to a chat (None for a chat never seen)."""
    chat_id = chat_id or (chat.chat_id if chat else None)
    if isinstance(cmd, (ReceiveUserMessage, ReceiveOperatorMessage)):
        if chat_id is None:  # a caller's bug: the new chat would have no id
            raise TypeError("decide() needs the chat_id of a message to a chat never seen")
        if isinstance(cmd, ReceiveUserMessage):
            return on_user_message(chat, cmd, chat_id)
        return on_operator_message(chat, cmd, chat_id)
    if isinstance(cmd, TimeOutAssignment):
        return on_timeout(chat, cmd)
    if chat is None:
        raise UnknownChat(f"chat {chat_id} does not exist")
    if isinstance(cmd, AssignToPuller):
        return on_pull(chat, cmd)
    if isinstance(cmd, ReleaseAssignment):
        return on_release(chat, cmd)
    if isinstance(cmd, CompleteChat):
        return on_complete(chat, cmd)
    if isinstance(cmd, ReassignChat):
        return on_reassign(chat, cmd)
    if isinstance(cmd, RouteChat):
        return on_route(chat, cmd)
    raise TypeError(f"unknown command {cmd!r}")


# ---- event -> command --------------------------------------------------------------------


def command_of(event: Envelope, at: datetime, route: Route | None = None) -> Command:
    """The command an inbound message or idle timeout (chat.inbound, chat.timeouts) applies at `at`.

    `route` is a user message's routing with its queue resolved (an unknown one falls back to default).
    """
    if isinstance(event, UserMessage):
        u = event.payload
        return ReceiveUserMessage(message_id=u.message_id, text=u.text, sent_at=u.sent_at, at=at, route=route)
    if isinstance(event, OperatorMessage):
        o = event.payload
        return ReceiveOperatorMessage(
            message_id=o.message_id, operator_id=o.operator_id, text=o.text, sent_at=o.sent_at, at=at
        )
    if isinstance(event, AssignmentIdle):
        return TimeOutAssignment(assignment_id=event.payload.assignment_id, at=at)
    # Every concrete event has a `type`; the Envelope base does not declare one.
    raise TypeError(f"the assigner does not apply {getattr(event, 'type', type(event).__name__)}")


# ---- operators' and admins' commands: ownership and capacity ----------------------------


@dataclass(frozen=True)
class AssignmentRecord:
    """A stored assignment, as the ownership checks need it."""

    assignment_id: uuid.UUID
    chat_id: str
    operator_id: str
    ended_at: datetime | None = None
    outcome: str | None = None


def ending_command(
    kind: Literal["release", "complete"],
    operator_id: str,
    assignment_id: uuid.UUID,
    record: AssignmentRecord | None,
    at: datetime,
) -> ReleaseAssignment | CompleteChat:
    """An operator's release or completion as a command, once the assignment exists, is theirs and is active."""
    if record is None:
        raise UnknownAssignment(f"assignment {assignment_id} does not exist")
    if record.operator_id != operator_id:
        raise NotYourAssignment(f"assignment {assignment_id} is not yours")
    if record.ended_at is not None:
        raise AssignmentNotActive(f"assignment {assignment_id} ended ({record.outcome})")
    if kind == "release":
        return ReleaseAssignment(operator_id=operator_id, assignment_id=assignment_id, at=at)
    return CompleteChat(by=f"operator:{operator_id}", at=at, assignment_id=assignment_id, operator_id=operator_id)


def check_operator_id(operator_id: str) -> None:
    """No event could carry this operator id: refuse the command that names it."""
    problem = operator_id_problem(operator_id)
    if problem is not None:
        raise InvalidCommand(f"operator id {problem}")


def check_room(operator_id: str, chat_id: str, held_chats: list[str], capacity: int) -> None:
    """An admin gives `chat_id` to an operator: they need room, unless they already hold that chat."""
    if chat_id not in held_chats and len(held_chats) >= capacity:
        raise OperatorAtCapacity(f"operator {operator_id} already holds {len(held_chats)} chat(s), the capacity")
