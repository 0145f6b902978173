"""Decoding a consumed record: validate it against its topic's schema, or say why it is poison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from pydantic import TypeAdapter, ValidationError

from shared.events import ADAPTERS, TYPE_HEADER, Envelope, decode_json
from shared.events import LIFECYCLE_TYPES as KNOWN_TYPES


@dataclass(frozen=True)
class Incoming:
    """A decoded event with where it came from."""

    event: Envelope
    topic: str
    partition: int
    offset: int


class Poison(Exception):
    """A record that can never be applied; it goes to the dead-letter topic."""


def decode_record(logical_topic: str, key: bytes | None, value: bytes | None) -> Envelope:
    """Decode and validate one record of a topic, or raise Poison with the reason."""
    adapter = ADAPTERS.get(logical_topic)
    if adapter is None:
        raise Poison(f"no schema for topic {logical_topic}")
    event: Envelope | None
    try:
        event = adapter.validate_json(value) if value is not None else None
    except ValidationError:
        event = None
    if event is None:
        _explain(adapter, value)  # the slow path only to name what is wrong
    expected = event.chat_id.encode()
    if key != expected:
        raise Poison(f"record key {key!r} does not match chat_id {event.chat_id!r}")
    return event


def _explain(adapter: TypeAdapter, value: bytes | None) -> NoReturn:
    try:
        data = decode_json(value)
    except ValueError as exc:
        raise Poison(str(exc)) from None
    if "schema_version" in data and data["schema_version"] != 1:
        raise Poison(f"unsupported schema_version {data['schema_version']!r}")
    try:
        adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Poison(f"validation failed at {where or 'record'}: {first['msg']}") from None
    raise Poison("record does not validate as JSON")


def skippable(headers, wanted: frozenset[str]) -> bool:
    """True when the record's `type` header names a known event type this group does not act on."""
    for name, value in headers or ():
        if name == TYPE_HEADER:
            try:
                kind = value.decode()
            except (AttributeError, UnicodeDecodeError):
                return False
            return kind in KNOWN_TYPES and kind not in wanted
    return False
