"""Tokens of a real identity provider (issue 13, item 10): RS256/ES256 verified against a JWKS URL.

The JWKS is served on loopback by the test (a tiny HTTP server in a thread); the services run
in-process against real Kafka and Postgres. Issuer and audience are checked, the role comes from a
configurable claim (a string or a list), a key that appears in the JWKS after start is accepted
without a restart, fetching never blocks the event loop, and every 401 carries `WWW-Authenticate`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness import running, token

ISSUER = "https://idp.example.test/realms/switchboard"
AUDIENCE = "switchboard-api"


class Jwks:
    """A JWKS endpoint on 127.0.0.1: keys can be added (rotation), fetches counted, answers delayed."""

    def __init__(self):
        self.keys: list[dict] = []
        self.fetches = 0
        self.delay_s = 0.0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                jwks.fetches += 1
                time.sleep(jwks.delay_s)
                body = json.dumps({"keys": list(jwks.keys)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, kind: str) -> "Key":
        """A new signing key published in the JWKS; returns it for signing."""
        key = Key(kind)
        self.keys.append(key.public_jwk())
        return key


class Key:
    """A private key of the identity provider and its `kid`."""

    def __init__(self, kind: str):
        self.kid = f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            self.jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    def public_jwk(self) -> dict:
        return {**self.jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict | None = None, **overrides) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user@example.com", "iat": now, "exp": now + 600,
                **(claims or {}), **overrides}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid})


@pytest.fixture
def jwks():
    server = Jwks()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def settings_for(env, jwks: Jwks, **overrides):
    return env.with_settings(auth_jwks_url=jwks.url, auth_issuer=ISSUER, auth_audience=AUDIENCE, **overrides)


def message() -> dict:
    return {"message_id": f"m-{uuid.uuid4().hex[:8]}", "sender": "user", "text": "hi"}


async def test_rs256_and_es256_tokens_from_the_jwks_are_accepted_with_the_role_from_a_list_claim(env, jwks):
    rsa_key, ec_key = jwks.add("rsa"), jwks.add("ec")
    settings = settings_for(env, jwks, auth_role_claim="realm_access.roles")
    async with running("ingest", settings) as ingest, running("assigner", settings) as assigner:
        # An ES256 operator token: the pull runs (nothing was posted yet, so no chat waits: 204).
        operator = ec_key.sign({"realm_access": {"roles": ["operator"]}}, sub="op-1")
        r = await assigner.post("/v1/assignments/next", headers=bearer(operator))
        assert r.status_code == 204, r.text
        # HS256 tokens signed with the shared secret still work beside the provider's.
        r = await assigner.post("/v1/assignments/next", headers=token("op-2"))
        assert r.status_code == 204, r.text
        frontend = rsa_key.sign({"realm_access": {"roles": ["offline_access", "frontend"]}}, sub="web-client")
        # The role decides: a frontend token may not pull.
        r = await assigner.post("/v1/assignments/next", headers=bearer(frontend))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role"
        r = await ingest.post(f"/v1/chats/c-{uuid.uuid4().hex[:6]}/messages", json=message(), headers=bearer(frontend))
        assert r.status_code == 202, r.text
    assert jwks.fetches == 2, "one fetch per service (two run here), not one per request"


async def test_a_plain_string_role_claim_is_read_from_the_default_claim(env, jwks):
    key = jwks.add("rsa")
    async with running("assigner", settings_for(env, jwks)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(key.sign(role="operator", sub="op-1")))
        assert r.status_code == 204, r.text


REFUSED = [
    pytest.param({"iss": "https://evil.example.test"}, "invalid_token", id="wrong-issuer"),
    pytest.param({"aud": "another-api"}, "invalid_token", id="wrong-audience"),
    pytest.param({"aud": None}, "invalid_token", id="no-audience"),
    pytest.param({"exp": int(time.time()) - 120}, "token_expired", id="expired"),
    pytest.param({"role": "superuser"}, "invalid_token", id="no-switchboard-role"),
    pytest.param({"sub": None}, "invalid_token", id="no-subject"),
    pytest.param({"sub": "op\u200bone"}, "invalid_subject", id="non-printable-subject"),
    pytest.param({"sub": "x" * 256}, "invalid_subject", id="subject-over-255-characters"),
]


@pytest.mark.parametrize("claims,code", REFUSED)
async def test_a_provider_token_failing_a_check_is_401_with_a_bearer_challenge(env, jwks, claims, code):
    key = jwks.add("ec")
    async with running("assigner", settings_for(env, jwks)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(key.sign({"role": "operator", **claims})))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge


async def test_a_token_signed_by_a_key_outside_the_jwks_is_401(env, jwks):
    jwks.add("rsa")
    stranger = Key("rsa")  # same kind, never published
    async with running("assigner", settings_for(env, jwks, auth_jwks_min_refresh_s=0)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(stranger.sign(role="operator")))
        forged = stranger.sign(role="operator").split(".")
        published = jwks.keys[0]["kid"]
        header = jwt.utils.base64url_encode(json.dumps({"alg": "RS256", "kid": published}).encode()).decode()
        r2 = await assigner.post("/v1/assignments/next", headers=bearer(".".join([header, *forged[1:]])))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r2.status_code == 401 and 'error="invalid_token"' in r2.headers["www-authenticate"]


async def test_every_401_carries_a_bearer_challenge(env, jwks):
    async with running("assigner", settings_for(env, jwks)) as assigner, running("stats", env.settings) as stats:
        missing = await assigner.post("/v1/assignments/next")
        garbage = await stats.get("/v1/stats/operators", headers=bearer("not-a-jwt"))
        hs_bad = await assigner.post("/v1/assignments/next",
                                     headers=bearer(jwt.encode({"sub": "x", "role": "operator", "exp": 1}, "k" * 32)))
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="switchboard"'
    for r in (garbage, hs_bad):
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="switchboard", error="invalid_token"')


async def test_a_key_published_after_start_is_accepted_without_a_restart(env, jwks):
    old = jwks.add("rsa")
    settings = settings_for(env, jwks, auth_jwks_min_refresh_s=0.5)
    async with running("assigner", settings) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(old.sign(role="operator", sub="op-1")))
        assert r.status_code == 204, r.text
        assert jwks.fetches == 1
        new = jwks.add("ec")  # the provider rotates: a new kid appears in its JWKS
        await asyncio.sleep(0.6)  # past the refetch cooldown
        r = await assigner.post("/v1/assignments/next", headers=bearer(new.sign(role="operator", sub="op-2")))
        assert r.status_code == 204, r.text
        assert jwks.fetches == 2, "one refetch for the unknown kid"
        r = await assigner.post("/v1/assignments/next", headers=bearer(old.sign(role="operator", sub="op-3")))
        assert r.status_code == 204, r.text
        assert jwks.fetches == 2


async def test_made_up_kids_do_not_become_a_flood_of_fetches(env, jwks):
    jwks.add("rsa")
    async with running("assigner", settings_for(env, jwks)) as assigner:  # default cooldown: 30 s
        for _ in range(10):
            r = await assigner.post("/v1/assignments/next", headers=bearer(Key("ec").sign(role="operator")))
            assert r.status_code == 401
    assert jwks.fetches <= 1


async def test_fetching_the_jwks_does_not_block_the_event_loop(env, jwks):
    key = jwks.add("rsa")
    jwks.delay_s = 1.5
    async with running("assigner", settings_for(env, jwks)) as assigner:
        pull = asyncio.create_task(assigner.post("/v1/assignments/next", headers=bearer(key.sign(role="operator"))))
        await asyncio.sleep(0.2)  # the fetch is under way
        started = time.perf_counter()
        health = await assigner.get("/healthz")
        waited = time.perf_counter() - started
        assert health.status_code == 200 and waited < 0.5, f"/healthz waited {waited:.2f}s behind the JWKS fetch"
        assert not pull.done()
        assert (await pull).status_code == 204


async def test_an_unreachable_jwks_is_503_not_401(env, jwks):
    key = jwks.add("rsa")
    jwks.server.shutdown()
    jwks.server.server_close()
    async with running("assigner", settings_for(env, jwks)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(key.sign(role="operator")))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "identity_provider_unavailable" and "retry-after" in r.headers
