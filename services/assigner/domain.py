"""The chat state machine of SPEC §3 as pure functions: `decide(chat, command) -> Decision`.

No I/O here. The store loads a `Chat`, calls `decide`, and persists the new chat together with
the facts (the lifecycle events of SPEC §2) in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Union

from shared.events import (
    AssignmentEndedPayload,
    ChatAnsweredPayload,
    ChatAssignedPayload,
    ChatCompletedPayload,
    ChatQueuedPayload,
    ChatReopenedPayload,
    MessageRecordedPayload,
)

WAITING = "waiting_assignment"
ASSIGNED = "assigned"
WAITING_USER = "waiting_real_user_reply"
COMPLETED = "completed"
STATES = (WAITING, ASSIGNED, WAITING_USER, COMPLETED)


class DomainError(Exception):
    """A command that the chat's current state refuses."""

    status = 409
    code = "conflict"


class NotYourAssignment(DomainError):
    status = 403
    code = "not_your_assignment"


class AssignmentNotActive(DomainError):
    status = 409
    code = "assignment_not_active"


class ChatIsCompleted(DomainError):
    status = 409
    code = "chat_completed"


@dataclass(frozen=True)
class Chat:
    """A chat row plus what the store knows of its current assignment."""

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


@dataclass(frozen=True)
class Fact:
    """A lifecycle fact to record and publish: `type` and payload of a chat.lifecycle event."""

    type: str
    payload: object


# ---- commands and incoming events -------------------------------------------------------


@dataclass(frozen=True)
class ReceiveUserMessage:
    message_id: str
    text: str
    sent_at: datetime | None
    at: datetime


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


Command = Union[
    ReceiveUserMessage, ReceiveOperatorMessage, TimeOutAssignment, AssignToPuller,
    ReleaseAssignment, CompleteChat, ReassignChat,
]


@dataclass(frozen=True)
class Decision:
    """The chat after a command (None: nothing changed) and the facts it produced."""

    chat: Chat | None
    facts: list[Fact] = field(default_factory=list)


def response_ms(started_at: datetime, at: datetime) -> int:
    """Whole milliseconds from an assignment's start to a response (floored, like the reconcile SQL)."""
    return (at - started_at) // timedelta(milliseconds=1)


def _message(cmd, sender: str, chat: Chat, operator_id: str | None, assignment_id, first_ms) -> Fact:
    return Fact("message_recorded", MessageRecordedPayload(
        message_id=cmd.message_id, sender=sender, operator_id=operator_id, text=cmd.text,
        sent_at=cmd.sent_at, recorded_at=cmd.at, assignment_id=assignment_id, first_response_ms=first_ms,
    ))


def _queued(reason: str, chat: Chat) -> Fact:
    return Fact("chat_queued", ChatQueuedPayload(reason=reason, waiting_since=chat.waiting_since,
                                                 queued_at=chat.queued_at))


def _ended(chat: Chat, outcome: str, at: datetime) -> Fact:
    return Fact("assignment_ended", AssignmentEndedPayload(
        assignment_id=chat.assignment_id, operator_id=chat.assigned_operator_id, outcome=outcome,
        started_at=chat.assignment_started_at, ended_at=at,
    ))


def _unassigned(chat: Chat, **changes) -> Chat:
    return replace(chat, assigned_operator_id=None, assignment_id=None, assignment_started_at=None,
                   assignment_responded=False, **changes)


def _requeue(chat: Chat, at: datetime, reason: str, last_operator: str | None) -> Decision:
    """Back to the queue keeping its position (release, idle timeout)."""
    new = _unassigned(chat, state=WAITING, queued_at=at, last_operator_id=last_operator,
                      waiting_since=chat.waiting_since or at)
    return Decision(new, [_ended(chat, reason, at), _queued(reason, new)])


def on_user_message(chat: Chat | None, cmd: ReceiveUserMessage, chat_id: str) -> Decision:
    """A user wrote: queue a new or answered chat, reopen a completed one, keep an assigned one."""
    if chat is None:
        new = Chat(chat_id=chat_id, state=WAITING, waiting_since=cmd.at, queued_at=cmd.at,
                   last_user_message_at=cmd.at, message_count=1, created_at=cmd.at)
        return Decision(new, [_message(cmd, "user", new, None, None, None), _queued("new", new)])
    counted = replace(chat, message_count=chat.message_count + 1, last_user_message_at=cmd.at)
    if chat.state == WAITING:
        return Decision(counted, [_message(cmd, "user", chat, None, None, None)])
    if chat.state == ASSIGNED:
        return Decision(counted, [_message(cmd, "user", chat, None, chat.assignment_id, None)])
    queued = replace(counted, state=WAITING, waiting_since=cmd.at, queued_at=cmd.at)
    facts = [_message(cmd, "user", chat, None, None, None)]
    if chat.state == COMPLETED:
        facts.append(Fact("chat_reopened", ChatReopenedPayload(reopened_at=cmd.at)))
        facts.append(_queued("reopened", queued))
    else:
        facts.append(_queued("user_reply", queued))
    return Decision(queued, facts)


def on_operator_message(chat: Chat | None, cmd: ReceiveOperatorMessage, chat_id: str) -> Decision:
    """An operator wrote: the assigned one's reply answers the chat and frees them."""
    op = cmd.operator_id
    answered = Fact("chat_answered", ChatAnsweredPayload(operator_id=op, answered_at=cmd.at))
    if chat is None:
        # Outreach: an operator writes first; the chat waits for the user.
        new = Chat(chat_id=chat_id, state=WAITING_USER, last_operator_id=op, operator_replied_at=cmd.at,
                   message_count=1, created_at=cmd.at)
        return Decision(new, [_message(cmd, "operator", new, op, None, None), answered])
    counted = replace(chat, message_count=chat.message_count + 1)
    if chat.state == ASSIGNED and chat.assigned_operator_id == op:
        first = None if chat.assignment_responded else response_ms(chat.assignment_started_at, cmd.at)
        new = _unassigned(counted, state=WAITING_USER, operator_replied_at=cmd.at, last_operator_id=op)
        return Decision(new, [_message(cmd, "operator", chat, op, chat.assignment_id, first),
                              _ended(chat, "answered", cmd.at), answered])
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
    """The store picked this waiting chat for the puller: assign it."""
    if chat.state != WAITING:
        raise DomainError(f"chat {chat.chat_id} is {chat.state}, not waiting")
    new = replace(chat, state=ASSIGNED, assigned_operator_id=cmd.operator_id, assignment_id=cmd.assignment_id,
                  assignment_started_at=cmd.at, assignment_responded=False)
    return Decision(new, [Fact("chat_assigned", ChatAssignedPayload(
        assignment_id=cmd.assignment_id, operator_id=cmd.operator_id, assigned_at=cmd.at, via="pull"))])


def _check_own_active(chat: Chat, operator_id: str, assignment_id: uuid.UUID) -> None:
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
    facts.append(Fact("chat_completed", ChatCompletedPayload(completed_by=cmd.by, completed_at=cmd.at)))
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
    new = replace(chat, state=ASSIGNED, assigned_operator_id=cmd.operator_id, assignment_id=cmd.assignment_id,
                  assignment_started_at=cmd.at, assignment_responded=False, last_operator_id=cmd.operator_id)
    facts.append(Fact("chat_assigned", ChatAssignedPayload(
        assignment_id=cmd.assignment_id, operator_id=cmd.operator_id, assigned_at=cmd.at, via="reassign")))
    return Decision(new, facts)


def decide(chat: Chat | None, cmd: Command, chat_id: str | None = None) -> Decision:
    """Apply one command or event to a chat (None for a chat never seen)."""
    chat_id = chat_id or (chat.chat_id if chat else None)
    if isinstance(cmd, ReceiveUserMessage):
        return on_user_message(chat, cmd, chat_id)
    if isinstance(cmd, ReceiveOperatorMessage):
        return on_operator_message(chat, cmd, chat_id)
    if isinstance(cmd, TimeOutAssignment):
        return on_timeout(chat, cmd)
    if chat is None:
        raise DomainError(f"chat {chat_id} does not exist")
    if isinstance(cmd, AssignToPuller):
        return on_pull(chat, cmd)
    if isinstance(cmd, ReleaseAssignment):
        return on_release(chat, cmd)
    if isinstance(cmd, CompleteChat):
        return on_complete(chat, cmd)
    if isinstance(cmd, ReassignChat):
        return on_reassign(chat, cmd)
    raise TypeError(f"unknown command {cmd!r}")


def may_pull(chat: Chat, operator_id: str, now: datetime, cooldown_s: float) -> bool:
    """Invariant 3: the last operator gets a chat back only after the cooldown since it was queued."""
    if chat.state != WAITING:
        return False
    if chat.last_operator_id != operator_id:
        return True
    return chat.queued_at is not None and now - chat.queued_at >= timedelta(seconds=cooldown_s)


def match_pullers(pullers: list[str], candidates: list[Chat], now: datetime, cooldown_s: float) -> list[Chat | None]:
    """Give each puller, in arrival order, the oldest candidate it may take (invariant 3), or None.

    `candidates` are waiting chats oldest first; each goes to at most one puller. A chat the first
    puller may not take (it had it last, not cooled down) stays available for the next ones.
    """
    taken: set[str] = set()
    matched: list[Chat | None] = []
    for operator_id in pullers:
        pick = next((c for c in candidates if c.chat_id not in taken and may_pull(c, operator_id, now, cooldown_s)),
                    None)
        if pick is not None:
            taken.add(pick.chat_id)
        matched.append(pick)
    return matched
