"""Tokens of an identity provider (RS256/ES256 verified against a JWKS URL) refused before any store is reached.

The JWKS is served on loopback by the test (a tiny HTTP server in a thread); the services are the
apps built with fakes (no Kafka, no Postgres). Issuer, audience, expiry, role and subject are
checked, a key outside the JWKS is refused, made-up kids cause no flood of fetches, an unreachable
JWKS is a 503, and every 401 carries `WWW-Authenticate`. What needs a request to get past the
token to real data (accepted tokens, rotation, a slow JWKS) is in tests/integration/test_auth_jwks.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests import fakes

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
            def do_GET(self):
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
        # A short poll: `shutdown` waits up to one poll interval (0.5 s by default) per test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, kind: str) -> Key:
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
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user@example.com",
            "iat": now,
            "exp": now + 600,
            **(claims or {}),
            **overrides,
        }
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


def settings_for(jwks: Jwks, **overrides):
    return fakes.unit_settings(auth_jwks_url=jwks.url, auth_issuer=ISSUER, auth_audience=AUDIENCE, **overrides)


def assigner_api(settings):
    """The assigner's HTTP API over an untouched store and batcher: a refused token reaches neither."""
    return fakes.serving(fakes.build("assigner", settings), "assigner")


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
async def test_a_provider_token_failing_a_check_is_401_with_a_bearer_challenge(jwks, claims, code):
    key = jwks.add("ec")
    async with assigner_api(settings_for(jwks)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(key.sign({"role": "operator", **claims})))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge


async def test_a_token_signed_by_a_key_outside_the_jwks_is_401(jwks):
    jwks.add("rsa")
    stranger = Key("rsa")  # same kind, never published
    async with assigner_api(settings_for(jwks, auth_jwks_min_refresh_s=0)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(stranger.sign(role="operator")))
        forged = stranger.sign(role="operator").split(".")
        published = jwks.keys[0]["kid"]
        header = jwt.utils.base64url_encode(json.dumps({"alg": "RS256", "kid": published}).encode()).decode()
        r2 = await assigner.post("/v1/assignments/next", headers=bearer(".".join([header, *forged[1:]])))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r2.status_code == 401 and 'error="invalid_token"' in r2.headers["www-authenticate"]


async def test_every_401_carries_a_bearer_challenge(jwks):
    stats_app = fakes.build("stats")
    async with assigner_api(settings_for(jwks)) as assigner, fakes.serving(stats_app, "stats") as stats:
        missing = await assigner.post("/v1/assignments/next")
        garbage = await stats.get("/v1/stats/operators", headers=bearer("not-a-jwt"))
        hs_bad = await assigner.post(
            "/v1/assignments/next", headers=bearer(jwt.encode({"sub": "x", "role": "operator", "exp": 1}, "k" * 32))
        )
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="switchboard"'
    for r in (garbage, hs_bad):
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="switchboard", error="invalid_token"')


async def test_made_up_kids_do_not_become_a_flood_of_fetches(jwks):
    jwks.add("rsa")
    async with assigner_api(settings_for(jwks)) as assigner:  # default cooldown: 30 s
        for _ in range(10):
            r = await assigner.post("/v1/assignments/next", headers=bearer(Key("ec").sign(role="operator")))
            assert r.status_code == 401
    assert jwks.fetches <= 1


async def test_an_unreachable_jwks_is_503_not_401(jwks):
    key = jwks.add("rsa")
    jwks.server.shutdown()
    jwks.server.server_close()
    async with assigner_api(settings_for(jwks)) as assigner:
        r = await assigner.post("/v1/assignments/next", headers=bearer(key.sign(role="operator")))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "identity_provider_unavailable" and "retry-after" in r.headers
