"""The AsyncAPI document of chat.inbound: complete references, the key, examples that really decode."""

from services.ingest import asyncapi
from shared.events import ID_PATTERN, INBOUND, OperatorMessage, UserMessage
from tests.harness import make_settings

SETTINGS = make_settings("postgresql://postgres@127.0.0.1/x", "pfx.")


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


def _resolve(doc, ref: str):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_every_reference_resolves():
    doc = asyncapi.document(SETTINGS)
    refs = list(_refs(doc))
    assert refs
    for ref in refs:
        assert _resolve(doc, ref) is not None


def test_the_channel_is_the_prefixed_topic_keyed_by_chat_id():
    doc = asyncapi.document(SETTINGS)
    channel = doc["channels"]["chatInbound"]
    assert channel["address"] == "pfx.chat.inbound"
    for message in doc["components"]["messages"].values():
        assert message["bindings"]["kafka"]["key"]["pattern"] == ID_PATTERN


def test_the_schemas_are_the_event_models_with_type_required():
    schemas = asyncapi.document(SETTINGS)["components"]["schemas"]
    for model in (UserMessage, OperatorMessage):
        schema = schemas[model.__name__]
        assert set(schema["properties"]) == set(model.model_fields)
        assert "type" in schema["required"] and schema["additionalProperties"] is False


def test_the_examples_are_valid_events():
    for message in asyncapi.document(SETTINGS)["components"]["messages"].values():
        for example in message["examples"]:
            assert INBOUND.validate_python(example["payload"]).type == message["name"]
