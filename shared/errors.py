"""The JSON error shape of every HTTP API: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

from collections.abc import Iterable

# Where FastAPI says a request error was (the first part of its `loc`): not part of the field's name.
REQUEST_PARTS = frozenset({"body", "query", "path", "header"})


class ApiError(Exception):
    """An HTTP error with a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict:
        """The JSON body sent to the client."""
        err = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}


def field_errors(errors, prefix: str = "", skip: Iterable[str] = ()) -> list[dict]:
    """Pydantic errors (a ValidationError or its `errors()`) as `{"field", "message", "type"}`.

    The field is dotted (`messages.3.text`) after `prefix`, without the parts named in `skip`, and
    `body` when nothing is left. Every API formats its field errors here, so every 422 names fields alike.
    """
    skip = frozenset(skip)
    out = []
    for err in errors.errors() if hasattr(errors, "errors") else errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in skip)
        field = ".".join(p for p in (prefix, loc) if p) or "body"
        out.append({"field": field, "message": err.get("msg", "invalid"), "type": err.get("type", "invalid")})
    return out


def describe(details: list[dict]) -> str:
    """The one-line message of a 422: the first field and what is wrong with it."""
    if not details:
        return "body: invalid request"
    return f"{details[0]['field']}: {details[0]['message']}"


def validation_error(details: list[dict]) -> ApiError:
    """The 422 `validation_error` answer for field errors: the first in the message, all in `details`."""
    return ApiError(422, "validation_error", describe(details), details=details)
