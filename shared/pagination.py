"""Keyset pagination of list endpoints: `limit` + an opaque `cursor`, `next_cursor` in the body.

A cursor is the sort key of the last row served, tagged with the list it belongs to, as
base64url JSON. It is opaque to clients (docs/contract.md, "Lists"): only its round trip is
promised. A cursor that does not decode, or was made by another list, is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Query

from shared.errors import ApiError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (1..{MAX_LIMIT}).")]
CursorParam = Annotated[
    str | None, Query(max_length=2048, description="`next_cursor` of the previous page; omitted: the first page.")
]


def encode_cursor(kind: str, key: list[Any]) -> str:
    """An opaque cursor for list `kind` resuming after sort key `key` (JSON-able values)."""
    raw = json.dumps({"list": kind, "after": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None, arity: int) -> list[Any] | None:
    """The sort key inside a cursor of list `kind` (None for the first page); 422 when it is not one."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        data = None
    key = data.get("after") if isinstance(data, dict) and data.get("list") == kind else None
    # Postgres text cannot hold NUL: such a value was never in a cursor we issued.
    if not (isinstance(key, list) and len(key) == arity and all(isinstance(v, str) and "\x00" not in v for v in key)):
        raise invalid_cursor()
    return key


def invalid_cursor() -> ApiError:
    """The 422 for a cursor this list did not issue."""
    return ApiError(
        422,
        "invalid_cursor",
        "cursor: not a cursor of this list; start again without one",
        details=[{"field": "cursor", "message": "not a cursor of this list", "type": "cursor"}],
    )
