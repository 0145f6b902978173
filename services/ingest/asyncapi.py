"""The AsyncAPI 3.0 document of `chat.inbound`, built from the pydantic models of `shared.events`."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from shared.events import ID_PATTERN, SCHEMA_VERSION, TOPIC_INBOUND, OperatorMessage, UserMessage
from shared.settings import Settings

KAFKA_BINDING = "0.5.0"
REF = "#/components/schemas/{model}"

_MESSAGES = {
    "UserMessage": (UserMessage, "user_message", "A chat's user wrote something."),
    "OperatorMessage": (OperatorMessage, "operator_message", "An operator wrote into a chat."),
}


def _schemas() -> dict:
    _, top = models_json_schema([(model, "validation") for model, _, _ in _MESSAGES.values()], ref_template=REF)
    schemas = top["$defs"]
    for name in _MESSAGES:
        # Consumers pick the model by `type`: a record without it cannot be decoded.
        required = schemas[name].setdefault("required", [])
        if "type" not in required:
            required.append("type")
    return schemas


def document(settings: Settings) -> dict:
    """The AsyncAPI document: the topic, its key (chat_id), and the two message envelopes."""
    topic = settings.topic(TOPIC_INBOUND)
    key = {"type": "string", "pattern": ID_PATTERN, "description": "The envelope's chat_id, UTF-8 encoded."}
    messages = {
        name: {
            "name": type_,
            "title": type_,
            "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=name)},
            "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
            "examples": [_example(type_)],
        }
        for name, (_, type_, summary) in _MESSAGES.items()
    }
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in _MESSAGES}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchboard chat.inbound",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "What users and operators write, as ingest publishes it and as a frontend may produce it "
                "directly. Every record is keyed by chat_id so one chat's messages keep their order. "
                "Produce with acks=all and idempotence on. Consumers apply each event_id once and each "
                "(chat_id, message_id) once; a record that fails validation goes to chat.dlq."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": settings.kafka_bootstrap_servers.split(",")[0],
                "protocol": "kafka",
                "description": "The Kafka cluster (bootstrap server).",
            }
        },
        "channels": {
            "chatInbound": {
                "address": topic,
                "title": TOPIC_INBOUND,
                "description": "User and operator messages; key = chat_id.",
                "servers": [{"$ref": "#/servers/kafka"}],
                "messages": channel_messages,
                "bindings": {
                    "kafka": {"topic": topic, "partitions": settings.topic_partitions, "bindingVersion": KAFKA_BINDING}
                },
            }
        },
        "operations": {
            "publishChatInbound": {
                "action": "send",
                "title": "Publish a user or operator message",
                "channel": {"$ref": "#/channels/chatInbound"},
                "messages": [{"$ref": f"#/channels/chatInbound/messages/{name}"} for name in _MESSAGES],
            },
            "consumeChatInbound": {
                "action": "receive",
                "title": "The assigner applies user and operator messages",
                "channel": {"$ref": "#/channels/chatInbound"},
                "messages": [{"$ref": f"#/channels/chatInbound/messages/{name}"} for name in _MESSAGES],
            },
        },
        "components": {"messages": messages, "schemas": _schemas()},
    }


def _example(type_: str) -> dict:
    payload = {"message_id": "m-1", "text": "hey", "sent_at": "2026-01-01T12:00:00Z"}
    if type_ == "operator_message":
        payload = {"message_id": "m-2", "operator_id": "op-1", "text": "hello, how can I help?"}
    return {
        "name": type_,
        "payload": {
            "event_id": "7d3b1c2e-52a4-4c59-9d0e-3f1f2b8f1a10",
            "type": type_,
            "schema_version": SCHEMA_VERSION,
            "chat_id": "chat-42",
            "occurred_at": "2026-01-01T12:00:00.123456Z",
            "producer": "web-frontend",
            "payload": payload,
        },
    }
