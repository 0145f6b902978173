"""Routing rules as pure functions (docs/contract.md "Routing"): eligibility, rank, cooldown, capacity,
presence, the lanes a pull probes, and the chat's routing facts."""

import uuid
from dataclasses import replace

import pytest

from services.assigner import allocation, routing
from services.assigner import domain as d
from services.assigner.routing import Lane, Profile, Queue
from shared.events import Routing
from tests.unit.test_assigner_domain import at


def waiting(chat_id, queue="default", skills=(), priority=0, since=0, last=None, step=60):
    return d.Chat(
        chat_id=chat_id,
        state=d.WAITING,
        last_operator_id=last,
        waiting_since=at(since),
        queued_at=at(since),
        queue_id=queue,
        skills=tuple(skills),
        priority=priority,
        rank=routing.rank_of(at(since), priority, step),
    )


def op(operator_id="A", queues=("default",), skills=(), capacity=None, status="available"):
    return Profile(operator_id, queues=tuple(queues), skills=frozenset(skills), capacity=capacity, status=status)


def test_without_configuration_an_operator_takes_any_chat_of_default_oldest_first():
    chats = sorted([waiting("c2", since=5), waiting("c1", since=0)], key=routing.rank_key)
    picks = routing.match([routing.default_profile("A")], chats, {}, at(10), 60)
    assert picks[0].chat_id == "c1"


def test_rank_is_waiting_since_minus_priority_times_the_step_so_an_old_low_priority_chat_still_wins():
    assert routing.rank_of(at(100), 2, 30) == at(40)
    old_low = waiting("old", since=0, priority=0)
    new_high = waiting("new", since=100, priority=1)  # rank 40: behind the chat waiting since 0
    newer_high = waiting("newer", since=30, priority=1)  # rank -30: ahead of it
    ordered = allocation.pull_candidates([old_low, new_high, newer_high], [])
    assert [c.chat_id for c in ordered] == ["newer", "old", "new"]


def test_a_chat_goes_only_to_members_of_its_queue():
    chat = waiting("c1", queue="billing")
    assert not routing.eligible(chat, op(queues=("default",)), Queue("billing"), at(0))
    assert routing.eligible(chat, op(queues=("default", "billing")), Queue("billing"), at(0))


def test_a_chat_needs_every_one_of_its_skills_until_the_queue_relaxes_them():
    chat = waiting("c1", skills=("de", "vip"), since=0)
    strict, relaxing = Queue(), Queue(skills_relax_after_s=30)
    assert not routing.eligible(chat, op(skills=("de",)), strict, at(10_000))
    assert routing.eligible(chat, op(skills=("de", "vip", "fr")), strict, at(0))
    assert not routing.eligible(chat, op(skills=("de",)), relaxing, at(29.9))
    assert routing.eligible(chat, op(skills=("de",)), relaxing, at(30))


def test_the_queue_cooldown_overrides_the_configured_one_for_the_last_operator():
    chat = waiting("c1", last="A", since=0)
    queues = {"default": Queue(repeat_cooldown_s=5)}
    assert not routing.may_take(chat, op("A"), queues, at(4.9), default_cooldown_s=60)
    assert routing.may_take(chat, op("A"), queues, at(5), default_cooldown_s=60)
    assert not routing.may_take(chat, op("A"), {}, at(5), default_cooldown_s=60)
    assert routing.may_take(chat, op("B"), queues, at(0), default_cooldown_s=60)


def test_each_operator_has_its_own_capacity_and_none_means_the_configured_one():
    assert routing.capacity_of(op(capacity=None), 3) == 3
    assert routing.capacity_of(op(capacity=0), 3) == 0
    room = allocation.with_room(["A", "B", "A", "B"], {}, {"A": 1, "B": 2})
    assert room == [True, True, False, True]


@pytest.mark.parametrize("status", ["away", "offline"])
def test_an_operator_away_or_offline_may_not_pull(status):
    with pytest.raises(routing.OperatorUnavailable):
        routing.check_may_pull(op(status=status))
    routing.check_may_pull(op(status="available"))


def test_a_batch_gives_a_skilled_chat_to_the_operator_with_the_skill_and_the_next_to_the_other():
    chats = [waiting("vip", skills=("vip",), since=0), waiting("plain", since=5)]
    picks = routing.match([op("A"), op("B", skills=("vip",))], chats, {}, at(10), 60)
    assert [p.chat_id for p in picks] == ["plain", "vip"]


def test_lanes_are_claimed_whole_when_a_puller_has_their_skills_and_up_to_the_cutoff_otherwise():
    lanes = [Lane("default", ()), Lane("default", ("vip",)), Lane("sales", ()), Lane("billing", ("de",))]
    queues = {"default": Queue(), "billing": Queue("billing", skills_relax_after_s=60)}
    pullers = [op("A", queues=("default", "billing")), op("B")]
    claims = routing.claims(lanes, pullers, queues, at(100), slack=4)
    assert [(c.lane, c.limit, c.relaxed_before) for c in claims] == [
        (Lane("default", ()), 6, None),
        (Lane("billing", ("de",)), 5, at(40)),
    ]


def test_an_unknown_queue_falls_back_to_default_and_says_which_was_asked():
    route = routing.resolve(Routing(queue="nowhere", priority=3, skills=["vip", "de"]), {"default"})
    assert route == d.Route(queue_id="default", priority=3, skills=("de", "vip"), requested_queue="nowhere")
    assert routing.resolve(Routing(queue="sales"), {"default", "sales"}).requested_queue is None
    assert routing.resolve(None, {"default"}) is None


def test_a_user_message_routes_a_new_chat_before_queueing_it():
    cmd = d.ReceiveUserMessage("m1", "hi", None, at(0), route=d.Route(queue_id="sales", priority=2, skills=("de",)))
    decision = d.decide(None, cmd, "c1")
    assert [f.type for f in decision.facts] == ["message_recorded", "chat_routed", "chat_queued"]
    assert (decision.chat.queue_id, decision.chat.priority, decision.chat.skills) == ("sales", 2, ("de",))
    assert decision.facts[2].payload.queue_id == "sales"


def test_later_routing_changes_only_the_fields_given_and_a_waiting_chat_keeps_its_waiting_time():
    chat = waiting("c1", queue="sales", skills=("de",), priority=2, since=0)
    cmd = d.ReceiveUserMessage("m2", "hi", None, at(50), route=d.Route(priority=5))
    decision = d.decide(chat, cmd)
    assert (decision.chat.queue_id, decision.chat.priority, decision.chat.skills) == ("sales", 5, ("de",))
    assert decision.chat.waiting_since == at(0)
    assert decision.facts[-1].type == "chat_routed" and decision.facts[-1].payload.previous_queue_id == "sales"
    same = d.decide(decision.chat, d.ReceiveUserMessage("m3", "hi", None, at(60), route=d.Route(priority=5)))
    assert [f.type for f in same.facts] == ["message_recorded"]


def test_the_first_assignment_since_opening_carries_its_wait_and_whether_it_met_the_sla():
    new = d.decide(None, d.ReceiveUserMessage("m1", "hi", None, at(0)), "c1").chat
    first = d.decide(new, d.AssignToPuller("A", uuid.uuid4(), at(61), sla_s=60, idle_timeout_s=90))
    payload = first.facts[0].payload
    assert (payload.first_wait_ms, payload.sla_met, payload.idle_timeout_s) == (61_000, False, 90)
    released = d.decide(first.chat, d.ReleaseAssignment("A", first.chat.assignment_id, at(70))).chat
    again = d.decide(released, d.AssignToPuller("B", uuid.uuid4(), at(80)))
    assert again.facts[0].payload.first_wait_ms is None and again.facts[0].payload.sla_met is None


def test_a_reopened_chat_counts_its_first_wait_again():
    done = replace(waiting("c1"), state=d.COMPLETED, waiting_since=None, queued_at=None, first_assigned_at=at(1))
    reopened = d.decide(done, d.ReceiveUserMessage("m9", "back", None, at(100))).chat
    assigned = d.decide(reopened, d.AssignToPuller("A", uuid.uuid4(), at(130), sla_s=60))
    assert (assigned.facts[0].payload.first_wait_ms, assigned.facts[0].payload.sla_met) == (30_000, True)


def test_profiles_name_only_existing_queues_and_default_is_kept():
    with pytest.raises(routing.UnknownQueue):
        routing.check_profile_queues(["default", "nope"], {"default"})
    with pytest.raises(routing.DefaultQueueKept):
        routing.check_deletable("default")
    with pytest.raises(routing.QueueLimit):
        routing.check_queue_room(False, routing.MAX_QUEUES)
    routing.check_queue_room(True, routing.MAX_QUEUES)


def test_a_pull_locks_only_the_lanes_with_the_best_heads_however_many_lanes_it_reaches():
    lanes = [Lane("default", (f"s{i}",), head=at(100 - i)) for i in range(40)]
    everything = op("A", skills=[f"s{i}" for i in range(40)])
    claims = routing.claims(lanes, [everything], {}, at(200), slack=4)
    assert sorted(c.lane.skills[0] for c in claims) == ["s35", "s36", "s37", "s38", "s39"]
    assert {c.limit for c in claims} == {5}
    fallback = routing.fallback_claims(lanes, everything, {}, at(200))
    assert len(fallback) == 40 and {c.limit for c in fallback} == {1}
