"""Pure counting: which counters a batch of lifecycle facts moves, by operator, queue, UTC day and chat.

No I/O here. The store turns a `Tally` into set-based upserts; `chats_handled` needs the
database to know which (operator, chat) pairs are new, so it is settled by `settle`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from shared.events import (
    AssignmentEnded,
    ChatAnswered,
    ChatAssigned,
    ChatCompleted,
    ChatQueued,
    Envelope,
    MessageRecorded,
)

OPERATOR_COUNTERS = (
    "assignments",
    "messages_sent",
    "chats_handled",
    "answered",
    "released",
    "timed_out",
    "reassigned_away",
    "first_response_count",
    "first_response_ms_sum",
)
CHAT_COUNTERS = ("user_messages", "operator_messages", "assignments")

# Upper bounds (seconds, inclusive) of the first-assignment wait histogram; one more bucket holds
# the waits above the last bound. Fixed, so every day's histogram adds up with every other's: they
# span a typical chat SLA target (60 s by default) from "instant" to "ten minutes".
FIRST_WAIT_BOUNDS_S = (5, 15, 30, 60, 120, 300, 600)
FIRST_WAIT_BUCKETS = tuple(f"first_wait_le_{b}s" for b in FIRST_WAIT_BOUNDS_S) + (
    f"first_wait_over_{FIRST_WAIT_BOUNDS_S[-1]}s",
)
QUEUE_COUNTERS = (
    "queued",
    "assigned",
    "answered",
    "completed",
    "first_wait_count",
    "first_wait_ms_sum",
    "sla_met",
    *FIRST_WAIT_BUCKETS,
)

# assignment_ended outcome -> the operator counter it moves ("completed" moves none).
OUTCOME_COUNTERS = {
    "answered": "answered",
    "released": "released",
    "timed_out": "timed_out",
    "reassigned": "reassigned_away",
}


def utc_day(at: datetime) -> date:
    """The UTC calendar day of an aware timestamp."""
    return at.astimezone(UTC).date()


def first_wait_bucket(wait_ms: int) -> str:
    """The histogram column a first-assignment wait lands in (bounds inclusive, as Prometheus' `le`)."""
    for bound, name in zip(FIRST_WAIT_BOUNDS_S, FIRST_WAIT_BUCKETS):
        if wait_ms <= bound * 1000:
            return name
    return FIRST_WAIT_BUCKETS[-1]


def sla_attainment(first_wait_count: int, sla_met: int) -> float | None:
    """Share of first assignments made within the queue's SLA target; None when there were none."""
    return sla_met / first_wait_count if first_wait_count else None


@dataclass
class Tally:
    """Counter increments of one batch, before `chats_handled` is settled against the database."""

    operator_days: dict[tuple[str, date], Counter] = field(default_factory=lambda: defaultdict(Counter))
    chats: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    # (operator_id, chat_id, day) of every operator message: candidates for chats_handled.
    touched: set[tuple[str, str, date]] = field(default_factory=set)
    queue_days: dict[tuple[str, date], Counter] = field(default_factory=lambda: defaultdict(Counter))
    first_responses_ms: list[int] = field(default_factory=list)
    assignments_started: int = 0
    assignments_ended: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)


def tally(events: Iterable[Envelope]) -> Tally:
    """Count what a batch of lifecycle facts adds; facts that move no counter are ignored."""
    out = Tally()
    for event in events:
        if isinstance(event, MessageRecorded):
            _count_message(out, event)
        elif isinstance(event, ChatAssigned):
            _count_assignment(out, event)
        elif isinstance(event, AssignmentEnded):
            e = event.payload
            out.assignments_ended[e.outcome] += 1
            counter = OUTCOME_COUNTERS.get(e.outcome)
            if counter:
                out.operator_days[(e.operator_id, utc_day(e.ended_at))][counter] += 1
        elif isinstance(event, ChatQueued):
            out.queue_days[(event.payload.queue_id, utc_day(event.payload.queued_at))]["queued"] += 1
        elif isinstance(event, ChatAnswered):
            out.queue_days[(event.payload.queue_id, utc_day(event.payload.answered_at))]["answered"] += 1
        elif isinstance(event, ChatCompleted):
            out.queue_days[(event.payload.queue_id, utc_day(event.payload.completed_at))]["completed"] += 1
    return out


def _count_assignment(out: Tally, event: ChatAssigned) -> None:
    p = event.payload
    day = utc_day(p.assigned_at)
    out.operator_days[(p.operator_id, day)]["assignments"] += 1
    out.chats[event.chat_id]["assignments"] += 1
    out.assignments_started += 1
    queue = out.queue_days[(p.queue_id, day)]
    queue["assigned"] += 1
    # A first assignment (since the chat was opened or reopened) carries its wait; `sla_met` is only
    # read alongside it, so attainment (sla_met / first_wait_count) can never exceed 1.
    if p.first_wait_ms is not None:
        queue["first_wait_count"] += 1
        queue["first_wait_ms_sum"] += p.first_wait_ms
        queue[first_wait_bucket(p.first_wait_ms)] += 1
        if p.sla_met:
            queue["sla_met"] += 1


def _count_message(out: Tally, event: MessageRecorded) -> None:
    p = event.payload
    out.messages[p.sender] += 1
    if p.sender == "user":
        out.chats[event.chat_id]["user_messages"] += 1
        return
    out.chats[event.chat_id]["operator_messages"] += 1
    if p.operator_id is None:
        return
    day = utc_day(p.recorded_at)
    row = out.operator_days[(p.operator_id, day)]
    row["messages_sent"] += 1
    out.touched.add((p.operator_id, event.chat_id, day))
    if p.first_response_ms is not None:
        row["first_response_count"] += 1
        row["first_response_ms_sum"] += p.first_response_ms
        out.first_responses_ms.append(p.first_response_ms)


@dataclass(frozen=True)
class Settled:
    """The increments to upsert: per operator and day, per operator all time, per chat, per queue and day."""

    operator_days: dict[tuple[str, date], dict[str, int]]
    operator_totals: dict[str, dict[str, int]]
    chats: dict[str, dict[str, int]]
    queue_days: dict[tuple[str, date], dict[str, int]] = field(default_factory=dict)


def settle(t: Tally, new_day_pairs: dict[tuple[str, date], int], new_pairs: dict[str, int]) -> Settled:
    """Add the first-time (operator, chat) pairs to chats_handled and roll the days up to all time.

    `new_day_pairs[(operator, day)]` counts chats the operator wrote to for the first time that
    day; `new_pairs[operator]` counts chats it wrote to for the first time ever.
    """
    days: dict[tuple[str, date], Counter] = defaultdict(Counter)
    totals: dict[str, Counter] = defaultdict(Counter)
    for key, counts in t.operator_days.items():
        days[key].update(counts)
        totals[key[0]].update(counts)
    for key, n in new_day_pairs.items():
        days[key]["chats_handled"] += n
    for operator_id, n in new_pairs.items():
        totals[operator_id]["chats_handled"] += n
    return Settled(
        operator_days=_nonzero(days, OPERATOR_COUNTERS),
        operator_totals=_nonzero(totals, OPERATOR_COUNTERS),
        chats=_nonzero(t.chats, CHAT_COUNTERS),
        queue_days=_nonzero(t.queue_days, QUEUE_COUNTERS),
    )


def _nonzero(rows: dict, names: tuple[str, ...]) -> dict:
    out = {}
    for key in sorted(rows):
        values = {name: int(rows[key].get(name, 0)) for name in names}
        if any(values.values()):
            out[key] = values
    return out


@dataclass(frozen=True)
class Difference:
    """One figure on which two sources disagree."""

    table: str
    key: tuple
    figure: str
    expected: int
    actual: int

    def describe(self, expected_name: str = "expected", actual_name: str = "actual") -> str:
        """A one-line human description of the difference."""
        where = " ".join(str(k) for k in self.key)
        return (
            f"{self.table} {where} {self.figure}: {expected_name}={self.expected} "
            f"{actual_name}={self.actual} (diff {self.actual - self.expected:+d})"
        )


def compare(
    table: str, names: tuple[str, ...], expected: dict[tuple, dict], actual: dict[tuple, dict]
) -> list[Difference]:
    """Every figure that differs between two keyed row sets; a missing row counts as all zeros."""
    diffs = []
    for key in sorted(set(expected) | set(actual), key=lambda k: tuple(str(p) for p in k)):
        want, got = expected.get(key, {}), actual.get(key, {})
        for name in names:
            a, b = int(want.get(name, 0)), int(got.get(name, 0))
            if a != b:
                diffs.append(Difference(table, key, name, a, b))
    return diffs
