"""Tokens of a real identity provider (issue 13, item 10): RS256/ES256 verified against a JWKS URL.

The JWKS is served on loopback by the test (a tiny HTTP server in a thread); the services run
in-process against real Kafka and Postgres. The role comes from a configurable claim (a string or a
list), a key that appears in the JWKS after start is accepted without a restart, and fetching never
blocks the event loop. Tokens refused before any data is reached (issuer, audience, expiry, subject,
unknown keys, an unreachable JWKS, the `WWW-Authenticate` challenge) are unit tests:
tests/unit/test_auth_jwks.py, whose JWKS server and keys this file uses.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from tests.harness import running, token
from tests.unit import test_auth_jwks as unit_jwks
from tests.unit.test_auth_jwks import AUDIENCE, ISSUER, Jwks

# The loopback JWKS server, its fixture and the header helper are the unit tests' (one copy).
jwks = unit_jwks.jwks
bearer = unit_jwks.bearer


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
