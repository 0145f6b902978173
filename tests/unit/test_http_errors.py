"""One "database is down" classification and one field-error formatter, over apps built in-process."""

import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import pytest
from fastapi import Query
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, ValidationError

from services.ingest import domain, handlers
from services.ingest.domain import MessageIn
from shared.errors import field_errors, validation_error
from shared.http import create_app


@asynccontextmanager
async def nothing(_app):
    yield


async def ready() -> dict[str, bool]:
    return {"postgres": True}


class Note(BaseModel):
    text: str = Field(min_length=1)


def app_raising(exc: Exception):
    app = create_app("test", title="t", lifespan=nothing, readiness=ready, auth_secret="s" * 32)

    @app.get("/fails")
    async def fails():
        raise exc

    @app.post("/notes")
    async def notes(note: Note, limit: int = Query(10, ge=1)):
        return {"text": note.text, "limit": limit}

    return app


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.PostgresConnectionError("connection refused"),
        TimeoutError(),
    ],
)
def test_every_way_the_database_is_down_is_a_retryable_503_with_the_error_shape(exc):
    with TestClient(app_raising(exc), raise_server_exceptions=False) as client:
        r = client.get("/fails")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "postgres_unavailable"


def test_a_bug_in_a_query_is_not_mistaken_for_an_outage():
    with TestClient(
        app_raising(asyncpg.UndefinedColumnError("column x does not exist")), raise_server_exceptions=False
    ) as client:
        assert client.get("/fails").status_code == 500


class DownStore:
    def __init__(self, exc: Exception):
        self.exc = exc

    async def claim(self, _drafts):
        raise self.exc


@pytest.mark.parametrize(
    "exc", [asyncpg.AdminShutdownError("shutdown"), asyncpg.QueryCanceledError("timeout"), ConnectionRefusedError()]
)
async def test_ingest_calls_the_same_outages_database_unavailable(exc):
    draft = domain.draft(
        "chat-1", MessageIn(message_id="m-1", sender="user", text="hi"), uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)
    )
    with pytest.raises(handlers.DatabaseUnavailable):
        await handlers.accept_messages(DownStore(exc), publisher=None, drafts=[draft])


def test_fastapi_request_errors_and_model_errors_name_their_fields_alike():
    with TestClient(app_raising(RuntimeError())) as client:
        r = client.post("/notes?limit=0", json={"text": ""})
    body = r.json()["error"]
    assert r.status_code == 422 and body["code"] == "validation_error"
    assert sorted(d["field"] for d in body["details"]) == ["limit", "text"]
    with pytest.raises(ValidationError) as exc:
        Note.model_validate({"text": ""})
    direct = validation_error(field_errors(exc.value))
    assert direct.body()["error"]["message"] == "text: String should have at least 1 character"
    assert direct.details == [d for d in body["details"] if d["field"] == "text"]
    assert field_errors(exc.value, prefix="messages.3")[0]["field"] == "messages.3.text"
