"""Tokens (docs/contract.md §4) and settings read from SWITCHBOARD_* variables."""

import time

import jwt
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.auth import Principal, issue_token, require
from shared.http import create_app
from shared.settings import DEV_SECRET, ConfigError, load_settings

SECRET = "unit-test-secret-0123456789abcdefghij"


class Body(BaseModel):
    name: str


def make_app() -> FastAPI:
    async def ready():
        return {"ok": True}

    app = create_app("unit", title="unit", lifespan=None, readiness=ready, auth_secret=SECRET)

    @app.post("/things")
    async def things(body: Body, me: Principal = Depends(require("operator"))):
        return {"sub": me.sub, "name": body.name}

    return app


@pytest.fixture
def client():
    return TestClient(make_app())


def bearer(tok):
    return {"Authorization": f"Bearer {tok}"}


def test_a_valid_operator_token_is_accepted(client):
    r = client.post("/things", json={"name": "x"}, headers=bearer(issue_token(SECRET, "op-1", "operator")))
    assert r.status_code == 200 and r.json() == {"sub": "op-1", "name": "x"}


def test_a_missing_token_is_401_even_with_an_invalid_body(client):
    r = client.post("/things", json={"wrong": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"


def test_a_bad_signature_is_401(client):
    r = client.post(
        "/things",
        json={"name": "x"},
        headers=bearer(issue_token("another-secret-0123456789abcdefghijkl", "op-1", "operator")),
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_an_expired_token_is_401(client):
    past = int(time.time()) - 100
    tok = jwt.encode({"sub": "op-1", "role": "operator", "iat": past - 10, "exp": past}, SECRET, algorithm="HS256")
    r = client.post("/things", json={"name": "x"}, headers=bearer(tok))
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


def test_a_remembered_token_still_expires(client, monkeypatch):
    tok = issue_token(SECRET, "op-1", "operator", ttl_s=60)
    assert client.post("/things", json={"name": "x"}, headers=bearer(tok)).status_code == 200
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    r = client.post("/things", json={"name": "x"}, headers=bearer(tok))
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


def test_a_remembered_token_is_bound_to_its_secret():
    tok = issue_token(SECRET, "op-1", "operator")
    assert TestClient(make_app()).post("/things", json={"name": "x"}, headers=bearer(tok)).status_code == 200
    other = make_app()
    other.state.auth_secret = "another-secret-0123456789abcdefghijkl"
    r = TestClient(other).post("/things", json={"name": "x"}, headers=bearer(tok))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_a_token_without_role_is_401(client):
    tok = jwt.encode({"sub": "op-1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert client.post("/things", json={"name": "x"}, headers=bearer(tok)).status_code == 401


def test_the_wrong_role_is_403(client):
    r = client.post("/things", json={"name": "x"}, headers=bearer(issue_token(SECRET, "web", "frontend")))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role"


def test_an_invalid_body_with_a_good_token_is_422_naming_the_field(client):
    r = client.post("/things", json={}, headers=bearer(issue_token(SECRET, "op-1", "operator")))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error" and "name" in r.json()["error"]["message"]


def test_unknown_routes_answer_json_errors(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_missing_secret_fails_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SWITCHBOARD_AUTH_SECRET", raising=False)
    with pytest.raises(ConfigError, match="SWITCHBOARD_AUTH_SECRET"):
        load_settings()


def test_the_development_secret_needs_development_mode(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", DEV_SECRET)
    monkeypatch.delenv("SWITCHBOARD_DEV_MODE", raising=False)
    with pytest.raises(ConfigError, match="development secret"):
        load_settings()
    monkeypatch.setenv("SWITCHBOARD_DEV_MODE", "1")
    assert load_settings().dev_mode is True


def test_settings_come_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_IDLE_TIMEOUT_S", "12")
    monkeypatch.setenv("SWITCHBOARD_OPERATOR_CAPACITY", "3")
    s = load_settings()
    assert s.idle_timeout_s == 12 and s.operator_capacity == 3
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092" and s.repeat_cooldown_s == 60
