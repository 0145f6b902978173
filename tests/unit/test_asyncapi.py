"""The AsyncAPI documents FastStream generates from declared subscribers and publishers, reshaped by shared.asyncapi.

The brokers below declare what each service consumes and produces, as the services do: batch
subscribers whose handlers take `list[<union of the topic>]`, publishers with `schema=<union>`,
topics and groups through the settings' prefix. The documents are checked against the official
AsyncAPI 3.0.0 JSON Schema (tests/data, vendored from asyncapi/spec-json-schemas) and against real
records of the envelope models.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from shared import asyncapi
from shared.events import (
    ALL_TOPICS,
    ID_PATTERN,
    TOPIC_DLQ,
    TOPIC_INBOUND,
    TOPIC_LIFECYCLE,
    TOPIC_TIMEOUTS,
    AssignmentIdle,
    AssignmentIdlePayload,
    InboundEvent,
    LifecycleEvent,
    TimeoutEvent,
    encode,
    new_event_id,
    utcnow,
)
from shared.kafka.broker import make_broker
from shared.settings import Settings
from tests import fakes
from tests.harness import operator_message, user_message
from tests.stats_facts import message_recorded

SPEC = json.loads((Path(__file__).parents[1] / "data" / "asyncapi-3.0.0-without-id.json").read_text())
SETTINGS = fakes.unit_settings()  # topic prefix "unit.": the documents must show logical names
PREFIX = SETTINGS.topic_prefix


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError unless `doc` is a valid AsyncAPI 3.0.0 document."""
    jsonschema.Draft7Validator(SPEC).validate(doc)


# ---- example declarations: what each service consumes and produces ---------------------------


def declare_ingest(s: Settings):
    broker = make_broker(s, "ingest")
    broker.publisher(s.topic(TOPIC_INBOUND), schema=InboundEvent, description="Accepted messages, keyed by chat_id.")
    return broker


def declare_assigner(s: Settings):
    broker = make_broker(s, "assigner")

    @broker.subscriber(s.topic(TOPIC_INBOUND), s.topic(TOPIC_TIMEOUTS), group_id=s.group("assigner"), batch=True)
    async def on_inbound_and_timeouts(events: list[InboundEvent | TimeoutEvent]) -> None:
        """Apply a poll's messages and idle timeouts in one transaction."""

    broker.publisher(s.topic(TOPIC_LIFECYCLE), schema=LifecycleEvent, title="outbox-relay", description="The relay.")
    broker.publisher(s.topic(TOPIC_DLQ), schema=bytes, description="Records the assigner can never apply.")
    return broker


def declare_idle_monitor(s: Settings):
    broker = make_broker(s, "idle_monitor")

    @broker.subscriber(s.topic(TOPIC_LIFECYCLE), group_id=s.group("idle_monitor"), batch=True)
    async def on_lifecycle(events: list[LifecycleEvent]) -> None:
        """Arm and disarm deadlines."""

    broker.publisher(s.topic(TOPIC_TIMEOUTS), schema=TimeoutEvent)
    return broker


def declare_stats(s: Settings):
    broker = make_broker(s, "stats")

    @broker.subscriber(s.topic(TOPIC_LIFECYCLE), group_id=s.group("stats"), batch=True)
    async def on_lifecycle(events: list[LifecycleEvent]) -> None:
        """Count the facts."""

    return broker


FACTORIES = {
    "ingest": declare_ingest,
    "assigner": declare_assigner,
    "idle_monitor": declare_idle_monitor,
    "stats": declare_stats,
}
TOPIC_MODELS = {
    TOPIC_INBOUND: asyncapi._members(InboundEvent),
    TOPIC_TIMEOUTS: asyncapi._members(TimeoutEvent),
    TOPIC_LIFECYCLE: asyncapi._members(LifecycleEvent),
}


@pytest.fixture(scope="module")
def system() -> dict:
    return asyncapi.system_document(SETTINGS, FACTORIES)


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _resolve(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _channel(doc: dict, topic: str) -> dict:
    (channel,) = [c for c in doc["channels"].values() if c["address"] == topic]
    return channel


def _channel_models(doc: dict, topic: str) -> set[str]:
    return {_resolve(doc, ref["$ref"])["title"] for ref in _channel(doc, topic)["messages"].values()}


# ---- the schema and the four topics ------------------------------------------------------------


def test_the_vendored_schema_is_the_asyncapi_3_0_0_schema():
    jsonschema.Draft7Validator.check_schema(SPEC)
    assert SPEC["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "bindings-kafka-0.5.0-message" in SPEC["definitions"]


def test_the_system_document_validates_and_names_all_four_topics_by_their_logical_names(system):
    validate(system)
    assert system["asyncapi"] == "3.0.0"
    assert sorted(c["address"] for c in system["channels"].values()) == sorted(ALL_TOPICS)
    assert PREFIX not in json.dumps(system["channels"]) + json.dumps(system["operations"])
    assert f"`{PREFIX}`" in system["info"]["description"]


def test_every_service_document_validates_on_its_own():
    for service, doc in asyncapi.documents(SETTINGS, FACTORIES).items():
        validate(doc)
        assert doc["info"]["title"] == f"Switchboard {service}"
        assert doc["operations"] and all(name.startswith(f"{service}.") for name in doc["operations"])


def test_the_validation_fails_on_a_broken_document(system):
    broken = copy.deepcopy(system)
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2's word, not 3's
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = copy.deepcopy(system)
    message = next(iter(broken["components"]["messages"].values()))
    message["bindings"]["kafka"]["key"] = "chat_id"  # a key must be a schema
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_every_reference_resolves(system):
    refs = list(_refs(system))
    assert len(refs) > 40
    for ref in refs:
        assert _resolve(system, ref) is not None, ref


def test_each_topic_carries_exactly_the_events_of_its_union(system):
    # The assigner's one handler of chat.inbound and chat.timeouts lists both topics' events;
    # each channel keeps its own.
    for topic, models in TOPIC_MODELS.items():
        assert _channel_models(system, topic) == {m.__name__ for m in models}, topic
    assert _channel_models(system, TOPIC_DLQ) == {asyncapi.DEAD_LETTER}


def test_every_payload_schema_is_its_envelope_model_with_type_required(system):
    schemas = system["components"]["schemas"]
    for models in TOPIC_MODELS.values():
        for model in models:
            message = system["components"]["messages"][model.__name__]
            assert message["name"] == model.model_fields["type"].default
            assert message["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}
            schema = schemas[model.__name__]
            assert set(schema["properties"]) == set(model.model_fields)
            assert "type" in schema["required"] and schema["additionalProperties"] is False
            payload_model = model.model_fields["payload"].annotation
            assert set(schemas[payload_model.__name__]["properties"]) == set(payload_model.model_fields)


def test_every_message_shows_the_record_key(system):
    for name, message in system["components"]["messages"].items():
        key = message["bindings"]["kafka"]["key"]
        assert message["bindings"]["kafka"]["bindingVersion"] == "0.5.0"
        if name == asyncapi.DEAD_LETTER:
            assert key == asyncapi.ORIGINAL_KEY
            assert "dlq.reason" in message["headers"]["required"]
        else:
            assert key["type"] == "string" and key["pattern"] == ID_PATTERN, name


def test_the_operations_name_service_action_topic_and_logical_group(system):
    ops = system["operations"]
    assert {
        "ingest.send.chat.inbound",
        "assigner.receive.chat.inbound",
        "assigner.receive.chat.timeouts",
        "assigner.send.chat.lifecycle",
        "assigner.send.chat.dlq",
        "idle_monitor.receive.chat.lifecycle",
        "idle_monitor.send.chat.timeouts",
        "stats.receive.chat.lifecycle",
    } == set(ops)
    assert ops["stats.receive.chat.lifecycle"]["bindings"]["kafka"]["groupId"]["enum"] == ["stats"]
    # The handler's docstring describes its operation (FastStream takes it as the description).
    assert ops["assigner.receive.chat.timeouts"]["description"].startswith("Apply a poll's messages")


def test_real_records_validate_against_their_message_schema_and_a_record_without_type_does_not(system):
    root = {"components": system["components"]}
    at = utcnow()
    idle = AssignmentIdle(
        event_id=new_event_id(),
        chat_id="c-1",
        occurred_at=at,
        producer="idle_monitor",
        payload=AssignmentIdlePayload(
            assignment_id=uuid.uuid4(), operator_id="op 1", deadline=at + timedelta(minutes=5)
        ),
    )
    records = [
        user_message("c-1"),
        operator_message("c-1", "op@example.com"),
        message_recorded("c-1", "user", at),
        idle,
    ]
    for record in records:
        schema = {**root, "$ref": f"#/components/schemas/{type(record).__name__}"}
        value = json.loads(encode(record))
        jsonschema.Draft202012Validator(schema).validate(value)
        del value["type"]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(value)


# ---- reshaping and merging ---------------------------------------------------------------------


def test_a_declared_payload_of_another_topic_is_refused():
    broker = make_broker(SETTINGS, "stats")

    @broker.subscriber(SETTINGS.topic(TOPIC_LIFECYCLE), group_id="stats", batch=True)
    async def on_lifecycle(events: list[InboundEvent]) -> None: ...

    with pytest.raises(ValueError, match="UserMessage, OperatorMessage on chat.lifecycle"):
        asyncapi.service_document(broker, "stats", SETTINGS)


def test_a_payload_that_is_no_envelope_is_kept_as_declared():
    broker = make_broker(SETTINGS, "bench")
    broker.publisher("bench.raw", schema=dict, description="Something else.")
    doc = asyncapi.service_document(broker, "bench", SETTINGS)
    validate(doc)
    assert doc["channels"]["benchRaw"]["address"] == "bench.raw"
    assert doc["components"]["messages"]["bench.send.bench.raw"]["payload"]["type"] == "object"


def test_a_process_that_declares_nothing_has_a_valid_empty_document():
    doc = asyncapi.service_document(make_broker(SETTINGS, "ingest"), "ingest", SETTINGS)
    validate(doc)
    assert doc["channels"] == {} and doc["operations"] == {}


def test_the_document_does_not_depend_on_the_order_of_declarations():
    def declare(topics: list[str]):
        broker = make_broker(SETTINGS, "x")
        for topic in topics:
            union = {TOPIC_INBOUND: InboundEvent, TOPIC_LIFECYCLE: LifecycleEvent, TOPIC_TIMEOUTS: TimeoutEvent}[topic]
            broker.publisher(SETTINGS.topic(topic), schema=union)
        return asyncapi.service_document(broker, "x", SETTINGS)

    first = declare([TOPIC_LIFECYCLE, TOPIC_TIMEOUTS, TOPIC_INBOUND])
    second = declare([TOPIC_INBOUND, TOPIC_LIFECYCLE, TOPIC_TIMEOUTS])
    assert json.dumps(first) == json.dumps(second)
    assert [c["address"] for c in first["channels"].values()] == [TOPIC_INBOUND, TOPIC_TIMEOUTS, TOPIC_LIFECYCLE]


def test_merging_refuses_two_contents_under_one_name(system):
    other = copy.deepcopy(system)
    other["components"]["schemas"]["UserMessage"]["description"] = "something else"
    with pytest.raises(ValueError, match="schema UserMessage"):
        asyncapi.merge([system, other])
    assert asyncapi.merge([system, copy.deepcopy(system)])["channels"] == system["channels"]


# ---- the page ----------------------------------------------------------------------------------


def test_the_page_is_self_contained_and_shows_topics_messages_and_keys(system):
    page = asyncapi.render_html(system)
    assert page.startswith("<!DOCTYPE html>")
    for topic in ALL_TOPICS:
        assert f"<code>{topic}</code>" in page
    for name in ("user_message", "assignment_idle", "chat_reopened", "dead_letter", ID_PATTERN.replace("&", "&amp;")):
        assert name in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert '<a href="#schema-UserMessagePayload">' in page
