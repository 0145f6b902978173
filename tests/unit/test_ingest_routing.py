"""Routing attributes on a posted user message (docs/contract.md "Routing"): carried into the event, or 422."""

import json

import pytest

from shared.events import INBOUND
from tests.unit.test_ingest_api import FRONTEND, cid, ingest, post, user


async def test_a_user_message_carries_its_routing_into_the_event_skills_sorted_and_distinct():
    serving, publisher = ingest()
    routing = {"queue": "billing", "priority": 7, "skills": ["vip", "de", "vip"]}
    async with serving as api:
        r = await post(api, cid(), user(routing=routing))
        plain = await post(api, cid(), user())
    assert r.status_code == plain.status_code == 202, r.text
    routed, unrouted = (INBOUND.validate_json(value) for _, value in publisher.published)
    assert routed.payload.routing.model_dump() == {"queue": "billing", "priority": 7, "skills": ["de", "vip"]}
    assert unrouted.payload.routing is None
    assert "routing" in json.loads(publisher.published[0][1])["payload"]


@pytest.mark.parametrize(
    "routing,field",
    [
        pytest.param({"queue": "Bad Slug"}, "routing.queue", id="bad-slug"),
        pytest.param({"queue": "-x"}, "routing.queue", id="slug-leading-dash"),
        pytest.param({"skills": [f"s{i}" for i in range(9)]}, "routing.skills", id="nine-skills"),
        pytest.param({"skills": ["UPPER"]}, "routing.skills.0", id="bad-skill"),
        pytest.param({"priority": 10}, "routing.priority", id="priority-10"),
        pytest.param({"priority": -1}, "routing.priority", id="priority-negative"),
        pytest.param({"team": "x"}, "routing.team", id="unknown-routing-field"),
        pytest.param("billing", "routing", id="not-an-object"),
    ],
)
async def test_malformed_routing_gets_422_naming_the_field_and_nothing_is_published(routing, field):
    serving, publisher = ingest()
    async with serving as api:
        r = await post(api, cid(), user(routing=routing))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field
    assert publisher.published == []


async def test_an_operator_message_may_not_carry_routing():
    serving, publisher = ingest()
    body = {"message_id": "m-1", "sender": "operator", "operator_id": "op-1", "text": "hi", "routing": {"priority": 1}}
    async with serving as api:
        r = await post(api, cid(), body)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "routing"
    assert publisher.published == []


async def test_a_batch_item_with_malformed_routing_is_rejected_alone():
    serving, publisher = ingest()
    good = {**user(routing={"queue": "sales"}), "chat_id": cid()}
    bad = {**user(routing={"priority": 12}), "chat_id": cid()}
    async with serving as api:
        r = await api.post("/v1/messages:batch", json={"messages": [good, bad]}, headers=FRONTEND)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["results"]] == [202, 422]
    assert r.json()["results"][1]["error"]["details"][0]["field"] == "routing.priority"
    assert len(publisher.published) == 1
