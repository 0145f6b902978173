"""Allocation of a batch of pulls (capacity, candidates, matching, the fallback), as pure functions."""

import uuid
from datetime import timedelta

from services.assigner import allocation
from services.assigner import domain as d
from tests.unit.test_assigner_domain import assigned_to, at


def waiting(chat_id, last=None, queued_s=0):
    return d.Chat(
        chat_id=chat_id, state=d.WAITING, last_operator_id=last, waiting_since=at(queued_s), queued_at=at(queued_s)
    )


def test_a_batch_of_pullers_takes_the_oldest_chats_in_arrival_order():
    chats = [waiting("c1"), waiting("c2"), waiting("c3")]
    picks = allocation.match_pullers(["A", "B"], chats, at(10), cooldown_s=60)
    assert [p.chat_id for p in picks] == ["c1", "c2"]


def test_a_puller_skips_its_own_recent_chat_and_leaves_it_for_the_next_puller():
    chats = [waiting("c1", last="A", queued_s=5), waiting("c2")]
    picks = allocation.match_pullers(["A", "B"], chats, at(10), cooldown_s=60)
    assert [p.chat_id for p in picks] == ["c2", "c1"]


def test_a_puller_gets_nothing_rather_than_a_chat_it_may_not_take_or_one_already_given():
    chats = [waiting("c1", last="A", queued_s=5), waiting("c2")]
    picks = allocation.match_pullers(["B", "A", "A"], chats, at(10), cooldown_s=60)
    assert [p.chat_id if p else None for p in picks] == ["c1", "c2", None]


def test_after_the_cooldown_the_last_operator_may_take_it_back_in_a_batch():
    picks = allocation.match_pullers(["A"], [waiting("c1", last="A", queued_s=0)], at(60), cooldown_s=60)
    assert picks[0].chat_id == "c1"


def test_each_pull_with_room_takes_one_place_so_a_second_pull_of_the_same_operator_may_not_fit():
    room = allocation.with_room(["A", "B", "A", "C", "A"], {"A": 0, "B": 2, "C": 1}, capacity=2)
    assert room == [True, False, True, True, False]


def test_an_operator_the_batch_never_saw_holding_anything_has_room():
    assert allocation.with_room(["new"], {}, capacity=1) == [True]


def test_a_pull_at_capacity_answers_the_oldest_active_assignment():
    first, second = uuid.uuid4(), uuid.uuid4()
    held = [allocation.Held(second, "c2", at(5)), allocation.Held(first, "c1", at(1))]
    assert allocation.current_of(held).assignment_id == first
    assert allocation.current_of([]) is None


def test_a_chat_released_in_the_batch_competes_at_the_place_it_kept_in_the_queue():
    claimed = [waiting("c2", queued_s=2), waiting("c3", queued_s=3)]
    held = assigned_to("A")
    back = d.decide(held, d.ReleaseAssignment("A", held.assignment_id, at(9))).chat
    candidates = allocation.pull_candidates(claimed, [back])
    assert [c.chat_id for c in candidates] == ["c1", "c2", "c3"]  # c1 waits since 0: first


def test_chats_the_batch_completed_do_not_compete_and_its_version_of_a_chat_wins():
    stored = waiting("c1", queued_s=0)
    done = d.Chat(chat_id="c1", state=d.COMPLETED)
    assert allocation.pull_candidates([stored, waiting("c2", queued_s=1)], [done]) == [waiting("c2", queued_s=1)]


def test_the_fallback_looks_further_only_for_a_puller_left_empty_by_a_full_claim():
    assert allocation.looks_further(None, claimed=5, limit=5)
    assert not allocation.looks_further(None, claimed=4, limit=5)  # the queue holds nothing more
    assert not allocation.looks_further(waiting("c1"), claimed=5, limit=5)


def test_the_cooldown_bound_of_the_fallback_query_agrees_with_may_pull():
    bound = allocation.cooled_before(at(70), cooldown_s=60)
    assert bound == at(10)
    assert allocation.may_pull(waiting("c1", last="A", queued_s=10), "A", at(70), cooldown_s=60)
    assert not allocation.may_pull(waiting("c1", last="A", queued_s=10), "A", bound + timedelta(seconds=59.9), 60)
