"""AsyncAPI 3.0 of what a process declares on its FastStream broker, and of the whole system.

FastStream's generator (`faststream.specification.AsyncAPI`) writes the document from the
broker's subscribers and publishers. Its raw form is shaped by handler names: one channel per
subscriber or publisher (three for `chat.lifecycle` in one process), a batch subscriber's payload
an array of events, a handler of two topics claiming both topics' events on each, the topic prefix
of a test in every address, and no record key. `service_document` keeps what it generated (the
payload schemas of the envelope models, which operations exist, their descriptions) and reshapes
it into the contract's form:

- one channel per topic, addressed by its logical name (`chat.inbound`, ...); a deployment's
  SWITCHBOARD_TOPIC_PREFIX is stated in `info.description`, never in an address;
- one message per envelope model (`UserMessage`, ...), named by its `type`, with the key
  (`bindings.kafka.key`: the chat id); on `chat.dlq`, whatever its publisher declares, the one
  `DeadLetter` message (the original key and value, any bytes, and the `dlq.*` headers);
- per topic only the events of its union in `shared.events` (a handler of `chat.inbound` and
  `chat.timeouts` lists both topics' events, each topic gets its own);
- one operation per service, action and topic (`assigner.receive.chat.inbound`), with the consumer
  group for a receive.

`merge` joins several services' documents into one; `documents` and `system_document` build them
from broker factories, functions that declare a service's subscribers and publishers on a fresh
broker without connecting (the `switchboard asyncapi` command passes one per service).
"""

from __future__ import annotations

import copy
import html
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import unquote

from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.specification import AsyncAPI

from shared.events import (
    ALL_TOPICS,
    ID_PATTERN,
    SCHEMA_VERSION,
    TOPIC_DLQ,
    TOPIC_INBOUND,
    TOPIC_LIFECYCLE,
    TOPIC_TIMEOUTS,
    InboundEvent,
    LifecycleEvent,
    TimeoutEvent,
)
from shared.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
# The document describes the event contract: its version follows the envelope's schema_version.
DOCUMENT_VERSION = f"{SCHEMA_VERSION}.0.0"
SCHEMA_REF = "#/components/schemas/"
MESSAGE_REF = "#/components/messages/"

CHAT_KEY = {
    "type": "string",
    "pattern": ID_PATTERN,
    "description": "The envelope's chat_id, UTF-8 encoded: one chat's records share a partition and keep their order.",
}
ORIGINAL_KEY = {
    "type": "string",
    "description": "The dead-lettered record's key, unchanged (its chat_id when it had a well-formed one; may be absent).",
}
DLQ_HEADERS = {
    "type": "object",
    "description": "Where the record came from and why it can never be applied (Kafka headers, UTF-8).",
    "required": ["dlq.reason", "dlq.source_topic", "dlq.source_partition", "dlq.source_offset", "dlq.consumer_group"],
    "properties": {
        "dlq.reason": {"type": "string", "description": "Why it was refused (the field and the rule, or the error)."},
        "dlq.source_topic": {"type": "string", "description": "The topic it was read from."},
        "dlq.source_partition": {"type": "string", "description": "Its partition, in decimal."},
        "dlq.source_offset": {"type": "string", "description": "Its offset, in decimal."},
        "dlq.consumer_group": {"type": "string", "description": "The consumer group that refused it."},
    },
}
DEAD_LETTER = "DeadLetter"


@dataclass(frozen=True)
class Topic:
    """A topic of the contract: what its records carry."""

    name: str
    description: str
    key: dict
    events: Any = None  # the union of envelope models of shared.events; None: any value (the DLQ)

    @property
    def event_names(self) -> set[str] | None:
        """The names of the envelope models the topic carries (None: any record)."""
        if self.events is None:
            return None
        return {model.__name__ for model in _members(self.events)}


TOPICS = {
    t.name: t
    for t in (
        Topic(
            TOPIC_INBOUND,
            "What users and operators write: ingest publishes it, a frontend may produce it directly "
            "(docs/frontends.md). Keyed by chat_id; produce with acks=all and idempotence on.",
            CHAT_KEY,
            InboundEvent,
        ),
        Topic(TOPIC_TIMEOUTS, "An assignment's operator stayed silent past the idle deadline.", CHAT_KEY, TimeoutEvent),
        Topic(
            TOPIC_LIFECYCLE,
            "The facts the assigner records, published through its outbox in commit order per chat.",
            CHAT_KEY,
            LifecycleEvent,
        ),
        Topic(
            TOPIC_DLQ,
            "Records a consumer group can never apply: the original key and value, with where they "
            "came from and why (docs/operations.md).",
            ORIGINAL_KEY,
        ),
    )
}

CONVENTIONS = (
    "Every record's value is a JSON envelope of shared/events.py (event_id, type, schema_version, chat_id, "
    "occurred_at, producer, payload) and its key is the chat_id. Consumers apply each event_id once and send "
    "a record they can never apply to chat.dlq. Channel addresses are the logical topic names"
)


def _members(events: Any) -> list[type]:
    """The models of a union (possibly Annotated with its discriminator), or the one model."""
    if get_origin(events) is Annotated:
        events = get_args(events)[0]
    args = get_args(events)
    return list(args) if args else [events]


# ---- one service --------------------------------------------------------------------------


def raw_document(broker: KafkaBroker, *, title: str = "Switchboard") -> dict:
    """FastStream's own AsyncAPI 3.0 document of the broker's declarations, as JSON-ready data."""
    spec = AsyncAPI(broker, schema_version=ASYNCAPI_VERSION, title=title, version=DOCUMENT_VERSION)
    return spec.to_specification().to_jsonable()


def service_document(broker: KafkaBroker, service: str, settings: Settings) -> dict:
    """The AsyncAPI 3.0 document of what `service` declares on `broker` (see the module's docstring)."""
    raw = raw_document(broker, title=f"Switchboard {service}")
    subscribers = _subscribers(broker)
    prefix = settings.topic_prefix
    doc = _skeleton(f"Switchboard {service}", _description(f"What {service} consumes and produces on Kafka.", prefix))
    servers = _servers(raw)
    doc["servers"] = servers
    schemas_in = raw.get("components", {}).get("schemas", {})
    for op in raw.get("operations", {}).values():
        channel_key = _pointer_parts(op["channel"]["$ref"])[1]
        channel = raw["channels"][channel_key]
        topic = _logical(channel["address"], prefix)
        action = op["action"]
        batch, group = subscribers.get(channel_key, (False, None)) if action == "receive" else (False, None)
        names: list[str] = []
        for ref in channel.get("messages", {}).values():
            message = _resolve(raw, ref["$ref"])
            payload = _resolve(raw, message["payload"]["$ref"]) if "$ref" in message["payload"] else message["payload"]
            if batch and payload.get("type") == "array":
                payload = payload.get("items", {})  # a record holds one event; the list is the poll's
            names += _add_messages(doc, service, action, topic, payload, schemas_in)
        key = _channel_key(topic)
        out_channel = doc["channels"].setdefault(key, _channel(topic, list(servers), settings))
        for name in names:
            out_channel["messages"][name] = {"$ref": MESSAGE_REF + name}
        operation = doc["operations"].setdefault(
            f"{service}.{action}.{topic}",
            {
                "action": action,
                "channel": {"$ref": f"#/channels/{key}"},
                "title": f"{service} {'consumes' if action == 'receive' else 'produces'} {topic}",
                "messages": [],
            },
        )
        if channel.get("description"):
            described = operation.get("description")
            operation["description"] = (
                f"{described}\n\n{channel['description']}" if described else channel["description"]
            )
        for name in names:
            reference = {"$ref": f"#/channels/{key}/messages/{name}"}
            if reference not in operation["messages"]:
                operation["messages"].append(reference)
        if group:
            operation["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [_logical(group, prefix)]},
                    "bindingVersion": KAFKA_BINDING,
                }
            }
    return _ordered(doc)


def _ordered(doc: dict) -> dict:
    """The same document in a stable order (a broker's subscribers come in no fixed one): topics as in
    shared.events, each topic's events as in its union, operations by topic then name, schemas by name."""
    topic_rank = {t: i for i, t in enumerate(ALL_TOPICS)}

    def channel_rank(key: str) -> tuple:
        address = doc["channels"][key]["address"]
        return (topic_rank.get(address, len(topic_rank)), address)

    for channel in doc["channels"].values():
        contract = TOPICS.get(channel["address"])
        order = [m.__name__ for m in _members(contract.events)] if contract and contract.events else []
        channel["messages"] = dict(
            sorted(
                channel["messages"].items(),
                key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
            )
        )
    doc["channels"] = {key: doc["channels"][key] for key in sorted(doc["channels"], key=channel_rank)}
    doc["operations"] = dict(
        sorted(
            doc["operations"].items(),
            key=lambda kv: (channel_rank(_pointer_parts(kv[1]["channel"]["$ref"])[1]), kv[0]),
        )
    )
    for op in doc["operations"].values():
        listed = [ref["$ref"].rsplit("/", 1)[-1] for ref in op["messages"]]
        channel = doc["channels"][_pointer_parts(op["channel"]["$ref"])[1]]
        op["messages"] = [
            {"$ref": f"{op['channel']['$ref']}/messages/{name}"} for name in channel["messages"] if name in listed
        ]
    messages = doc["components"]["messages"]
    in_channels = [name for c in doc["channels"].values() for name in c["messages"]]
    doc["components"]["messages"] = {
        name: messages[name]
        for name in sorted(messages, key=lambda n: (in_channels.index(n) if n in in_channels else len(in_channels), n))
    }
    doc["components"]["schemas"] = dict(sorted(doc["components"]["schemas"].items()))
    return doc


def _subscribers(broker: KafkaBroker) -> dict[str, tuple[bool, str | None]]:
    """Per raw channel key of a subscriber: whether it consumes batches, and its consumer group."""
    found = {}
    for sub in broker.subscribers:
        if not sub.specification.include_in_schema:
            continue
        for key in sub.schema():
            found[key.replace("/", ".")] = (isinstance(sub, BatchSubscriber), getattr(sub, "group_id", None) or None)
    return found


def _add_messages(doc: dict, service: str, action: str, topic: str, payload: dict, schemas_in: dict) -> list[str]:
    """Add the component messages (and their schemas) of one declared payload; return their names."""
    contract = TOPICS.get(topic)
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    if contract is not None and contract.events is None:
        messages[DEAD_LETTER] = _dead_letter(contract)
        return [DEAD_LETTER]
    models = list(dict.fromkeys(_envelope_models(payload, schemas_in)))
    if not models:  # not envelope models: the payload as declared, under a name of its own
        name = f"{service}.{action}.{topic}"
        body = copy.deepcopy(payload)
        _copy_referenced(body, schemas_in, schemas)
        messages[name] = {"name": name, "contentType": "application/json", "payload": body}
        if contract is not None:
            messages[name]["bindings"] = {"kafka": {"key": contract.key, "bindingVersion": KAFKA_BINDING}}
        return [name]
    allowed = contract.event_names if contract is not None else None
    kept = [m for m in models if allowed is None or m in allowed]
    if not kept:
        raise ValueError(
            f"{service} declares {', '.join(models)} on {topic}, which carries only {sorted(allowed or ())}"
        )
    for model in kept:
        schema = copy.deepcopy(schemas_in[model])
        # The model has a default `type`, so pydantic leaves it optional; a record cannot be decoded without it.
        required = schema.setdefault("required", [])
        if "type" not in required:
            required.append("type")
        schemas[model] = schema
        _copy_referenced(schema, schemas_in, schemas)
        messages[model] = {
            "name": schema["properties"]["type"]["const"],
            "title": model,
            "summary": schema.get("description", model),
            "contentType": "application/json",
            "payload": {"$ref": SCHEMA_REF + model},
            "bindings": {"kafka": {"key": (contract.key if contract else CHAT_KEY), "bindingVersion": KAFKA_BINDING}},
        }
    return kept


def _dead_letter(topic: Topic) -> dict:
    return {
        "name": "dead_letter",
        "title": DEAD_LETTER,
        "summary": "A record some consumer group can never apply, as it was read.",
        "contentType": "application/octet-stream",
        "headers": DLQ_HEADERS,
        "payload": {
            "description": "The original record's value, byte for byte: usually a JSON envelope of the source "
            "topic, possibly not JSON at all (that may be why it is here)."
        },
        "bindings": {"kafka": {"key": topic.key, "bindingVersion": KAFKA_BINDING}},
    }


def _envelope_models(schema: dict, schemas: dict) -> Iterable[str]:
    """The names of the envelope models a payload schema is (a model, or a union of them, at any depth)."""
    if "$ref" in schema:
        name = _pointer_parts(schema["$ref"])[-1]
        target = schemas.get(name, {})
        if _is_envelope(target):
            yield name
        else:
            yield from _envelope_models(target, schemas)
        return
    if _is_envelope(schema) and schema.get("title") in schemas:
        yield schema["title"]
        return
    for key in ("oneOf", "anyOf", "allOf"):
        for member in schema.get(key, []):
            yield from _envelope_models(member, schemas)


def _is_envelope(schema: dict) -> bool:
    props = schema.get("properties", {})
    return "event_id" in props and "const" in props.get("type", {})


def _copy_referenced(node: Any, source: dict, target: dict) -> None:
    """Copy into `target` every component schema that `node` refers to, transitively."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF):
            name = _pointer_parts(ref)[-1]
            if name not in target and name in source:
                target[name] = copy.deepcopy(source[name])
                _copy_referenced(target[name], source, target)
        for value in node.values():
            _copy_referenced(value, source, target)
    elif isinstance(node, list):
        for value in node:
            _copy_referenced(value, source, target)


def _channel(topic: str, servers: list[str], settings: Settings) -> dict:
    contract = TOPICS.get(topic)
    channel: dict[str, Any] = {"address": topic, "title": topic}
    if contract is not None:
        channel["description"] = contract.description
    if servers:
        channel["servers"] = [{"$ref": f"#/servers/{name}"} for name in servers]
    channel["messages"] = {}
    channel["bindings"] = {
        "kafka": {
            "topic": topic,
            "partitions": settings.topic_partitions,
            "replicas": settings.topic_replication_factor,
            "bindingVersion": KAFKA_BINDING,
        }
    }
    return channel


def _servers(raw: dict) -> dict:
    """One server per bootstrap address FastStream found, named `kafka` (or kafka-1, kafka-2, ...)."""
    hosts = [s["host"] for s in raw.get("servers", {}).values()]
    names = ["kafka"] if len(hosts) == 1 else [f"kafka-{i}" for i in range(1, len(hosts) + 1)]
    return {
        name: {"host": host, "protocol": "kafka", "description": "A bootstrap server of the Kafka cluster."}
        for name, host in zip(names, hosts)
    }


def _channel_key(topic: str) -> str:
    """`chat.inbound` -> `chatInbound`."""
    head, *rest = topic.replace("-", ".").replace("_", ".").split(".")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _logical(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _description(what: str, prefix: str) -> str:
    text = f"{what} {CONVENTIONS}"
    if prefix:
        return f"{text}: this deployment prefixes every topic and consumer group with `{prefix}`."
    return f"{text} (a deployment's SWITCHBOARD_TOPIC_PREFIX, if any, goes before each)."


def _skeleton(title: str, description: str) -> dict:
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": DOCUMENT_VERSION, "description": description},
        "defaultContentType": "application/json",
        "servers": {},
        "channels": {},
        "operations": {},
        "components": {"messages": {}, "schemas": {}},
    }


def _pointer_parts(ref: str) -> list[str]:
    """The unescaped parts of a local JSON pointer (FastStream percent-encodes them too)."""
    if not ref.startswith("#/"):
        raise ValueError(f"not a local reference: {ref}")
    return [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]


def _resolve(doc: dict, ref: str) -> dict:
    node: Any = doc
    for part in _pointer_parts(ref):
        node = node[part]
    return node


# ---- several services ------------------------------------------------------------------------

BrokerFactory = Callable[[Settings], KafkaBroker]
SYSTEM = "What Switchboard's services consume and produce on Kafka."


def merge(docs: Iterable[dict], *, title: str = "Switchboard", description: str | None = None) -> dict:
    """One document of several services': channels joined by topic, everything else side by side.

    Two documents that give one name (a server, message, schema or operation) different contents
    cannot be merged: ValueError names it.
    """
    merged = _skeleton(title, description or _description(SYSTEM, ""))
    for doc in docs:
        _join(merged["servers"], doc.get("servers", {}), "server")
        _join(merged["operations"], doc.get("operations", {}), "operation")
        for part in ("messages", "schemas"):
            _join(merged["components"][part], doc.get("components", {}).get(part, {}), part[:-1])
        for key, channel in doc.get("channels", {}).items():
            mine = merged["channels"].setdefault(key, copy.deepcopy(channel))
            if {k: v for k, v in mine.items() if k != "messages"} != {
                k: v for k, v in channel.items() if k != "messages"
            }:
                raise ValueError(f"two documents describe channel {key} differently")
            mine["messages"].update(copy.deepcopy(channel["messages"]))
    return _ordered(merged)


def _join(into: dict, items: Mapping[str, Any], what: str) -> None:
    for name, value in items.items():
        if name in into and into[name] != value:
            raise ValueError(f"two documents give {what} {name} different contents")
        into[name] = copy.deepcopy(value)


def documents(settings: Settings, factories: Mapping[str, BrokerFactory]) -> dict[str, dict]:
    """Each service's document, from the broker its factory declares on (nothing connects)."""
    return {service: service_document(factory(settings), service, settings) for service, factory in factories.items()}


def system_document(settings: Settings, factories: Mapping[str, BrokerFactory]) -> dict:
    """The whole system's document: every service's, merged."""
    return merge(documents(settings, factories).values(), description=system_description(settings))


def system_description(settings: Settings) -> str:
    """The merged document's description, with the deployment's topic prefix if it has one."""
    return _description(SYSTEM, settings.topic_prefix)


# ---- the HTML view -----------------------------------------------------------------------------


def render_html(doc: dict, json_url: str | None = "asyncapi.json") -> str:
    """A self-contained page of the document: no script, no stylesheet or font from elsewhere (works offline)."""
    e = html.escape
    info = doc["info"]
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(info['title'])} — AsyncAPI</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f4f4f4;padding:.6rem;overflow:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
        "section{border-top:1px solid #ddd;margin-top:1.5rem}</style></head><body>",
        f"<h1>{e(info['title'])} <small>AsyncAPI {e(doc['asyncapi'])}, contract {e(info['version'])}</small></h1>",
        f"<p>{e(info.get('description', ''))}</p>",
    ]
    if json_url:
        out.append(f'<p>The document itself: <a href="{e(json_url)}">{e(json_url)}</a>.</p>')
    if doc["servers"]:
        hosts = ", ".join(f"<code>{e(s['host'])}</code>" for s in doc["servers"].values())
        out.append(f"<p>Kafka: {hosts}</p>")
    if not doc["channels"]:
        out.append("<p>This process declares no Kafka subscriber or publisher.</p>")
    for key, channel in doc["channels"].items():
        out.append(f'<section id="channel-{e(key)}"><h2>Topic <code>{e(channel["address"])}</code></h2>')
        out.append(f"<p>{e(channel.get('description', ''))}</p>")
        ops = [(name, op) for name, op in doc["operations"].items() if op["channel"]["$ref"] == f"#/channels/{key}"]
        if ops:
            out.append("<table><tr><th>operation</th><th>action</th><th>consumer group</th><th>description</th></tr>")
            for name, op in ops:
                group = op.get("bindings", {}).get("kafka", {}).get("groupId", {}).get("enum", [""])[0]
                out.append(
                    f"<tr><td><code>{e(name)}</code></td><td>{e(op['action'])}</td><td>{e(group)}</td>"
                    f"<td>{e(op.get('description', ''))}</td></tr>"
                )
            out.append("</table>")
        out.append("<h3>Messages</h3><ul>")
        for ref in channel["messages"].values():
            name = _pointer_parts(ref["$ref"])[-1]
            message = messages[name]
            out.append(
                f'<li><a href="#message-{e(name)}"><code>{e(message.get("name", name))}</code></a> '
                f"{e(message.get('summary', ''))}</li>"
            )
        out.append("</ul></section>")
    if messages:
        out.append("<section><h2>Messages</h2>")
    for name, message in messages.items():
        out.append(f'<h3 id="message-{e(name)}"><code>{e(message.get("name", name))}</code> ({e(name)})</h3>')
        out.append(
            f"<p>{e(message.get('summary', ''))} Content type: <code>{e(message.get('contentType', ''))}</code></p>"
        )
        key = message.get("bindings", {}).get("kafka", {}).get("key")
        if key is not None:
            out.append(f"<p>Key:</p><pre>{e(json.dumps(key, indent=2))}</pre>")
        if "headers" in message:
            out.append(f"<p>Headers:</p><pre>{e(json.dumps(message['headers'], indent=2))}</pre>")
        out.append(f"<p>Payload:</p><pre>{_linked(message['payload'])}</pre>")
    if messages:
        out.append("</section>")
    if schemas:
        out.append("<section><h2>Schemas</h2>")
    for name, schema in schemas.items():
        out.append(f'<h3 id="schema-{e(name)}"><code>{e(name)}</code></h3><pre>{_linked(schema)}</pre>')
    if schemas:
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def _linked(schema: dict) -> str:
    """The schema as escaped JSON whose component references link to their anchors on the page."""
    text = html.escape(json.dumps(schema, indent=2))
    for_ref = html.escape(f'"$ref": "{SCHEMA_REF}')
    parts = text.split(for_ref)
    linked = [parts[0]]
    for part in parts[1:]:
        name, sep, rest = part.partition(html.escape('"'))
        linked.append(f'"$ref": "<a href="#schema-{name}">{SCHEMA_REF}{name}</a>{sep}{rest}')
    return "".join(linked)
