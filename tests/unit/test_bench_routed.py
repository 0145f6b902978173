"""The routed scale check's fixed mix: every lane has takers, profiles are valid."""

from shared.events import MAX_SKILLS
from switchboard.bench import routed


def test_every_queue_and_every_skill_set_has_a_taker_among_200_pullers():
    profiles = [routed.profile(j) for j in range(200)]
    for queue in routed.QUEUES:
        takers = [p for p in profiles if queue in p["queues"]]
        for skills in routed.SKILL_SETS:
            assert any(set(skills) <= set(p["skills"]) for p in takers), (queue, skills)


def test_profiles_are_mixed_and_valid():
    profiles = [routed.profile(j) for j in range(200)]
    assert {len(p["queues"]) for p in profiles} == {1, 2, 3, 4, 5}
    assert {p["capacity"] for p in profiles} == {1, 2, 3}
    assert len({tuple(p["skills"]) for p in profiles}) >= 4
    assert all(p["skills"] == sorted(p["skills"]) and len(p["skills"]) <= MAX_SKILLS for p in profiles)
    assert len(routed.SKILL_SETS) == 8 and len(routed.QUEUES) == 20
