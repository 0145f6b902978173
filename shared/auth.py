"""Bearer tokens (docs/contract.md §4): `sub` and `role` in {frontend, operator, admin}.

HS256 tokens signed with SWITCHBOARD_AUTH_SECRET (development, internal tools), and, when
SWITCHBOARD_AUTH_JWKS_URL is set, RS256/ES256 tokens of an identity provider verified against its JWKS.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from fastapi import Depends, Request

from shared.errors import ApiError
from shared.events import operator_id_problem

# `chat`: a chat id as `sub`, minted by delivery, lets a browser read and write only that chat (docs/contract.md §9).
Role = Literal["frontend", "operator", "admin", "chat"]
ROLES: tuple[str, ...] = ("frontend", "operator", "admin", "chat")
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """Who is calling, taken from the token alone."""

    sub: str
    role: str


def issue_token(secret: str, sub: str, role: str, ttl_s: int = 12 * 3600) -> str:
    """Sign a token for `sub` with `role`, valid for `ttl_s` seconds."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": role, "iat": now, "exp": now + ttl_s}, secret, algorithm=ALGORITHM)


_VERIFIED: dict[tuple[str, str], tuple[Principal, float]] = {}
VERIFIED_CACHE_SIZE = 10_000


def verify_token(secret: str, token: str) -> Principal:
    """Check signature, expiry and claims; raise ApiError(401) on any problem.

    A token whose signature and claims were checked once is remembered (operators send the same
    token with every request for hours); its expiry is still checked on every use.
    """
    known = _VERIFIED.get((secret, token))
    if known is not None:
        principal, exp = known
        if time.time() < exp:
            return principal
        del _VERIFIED[(secret, token)]
        raise ApiError(401, "token_expired", "the bearer token has expired")
    principal, exp = _verify(secret, token)
    if len(_VERIFIED) >= VERIFIED_CACHE_SIZE:
        _VERIFIED.clear()
    _VERIFIED[(secret, token)] = (principal, exp)
    return principal


def _verify(secret: str, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "role", "exp"]})
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token_expired", "the bearer token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, "invalid_token", f"the bearer token is not valid: {exc}") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub or role not in ROLES:
        raise ApiError(401, "invalid_token", "the bearer token lacks a valid sub or role")
    # The subject becomes an operator id in events, stats paths and the console: refuse here, with
    # a clear 401, a subject that no later step could carry (never a 500 further down).
    problem = operator_id_problem(sub)
    if problem is not None:
        raise ApiError(401, "invalid_subject", f"the bearer token's sub {problem}")
    return Principal(sub=sub, role=role), float(claims["exp"])


async def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_token", "an `Authorization: Bearer <token>` header is required")
    return await principal_of(request, token.strip())


async def principal_of(request: Request, token: str) -> Principal:
    """The token's principal: an identity provider's (JWKS) token or an HS256 one, else ApiError 401/503."""
    jwks: JwksVerifier | None = getattr(request.app.state, "jwks", None)
    if jwks is not None and jwks.handles(token):
        return await jwks.verify(token)
    return verify_token(request.app.state.auth_secret, token)


# ---- tokens of an identity provider, verified against its JWKS ------------------------------------

JWKS_ALGORITHMS = ("RS256", "ES256")
# Most privileged first: a token whose role claim lists several Switchboard roles acts with the first.
ROLE_PRECEDENCE = ("admin", "operator", "frontend")


class JwksVerifier:
    """RS256/ES256 tokens checked against a JWKS URL, with issuer, audience and a configurable role claim.

    PyJWKClient caches the key set for `cache_s` seconds and refetches it once when a token names an
    unknown `kid` (key rotation), at most every `min_refresh_s` seconds (a flood of made-up kids must
    not become a flood of requests to the provider). Its fetch is blocking I/O: it runs in a thread.
    A verified token is remembered until it expires or the key set is due for a refetch, whichever
    comes first, so the thread is used once per token, not per request.
    """

    def __init__(
        self,
        url: str,
        *,
        issuer: str,
        audience: str,
        role_claim: str = "role",
        cache_s: float = 300,
        min_refresh_s: float = 30,
        fetch_timeout_s: float = 5,
    ):
        self.client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=cache_s, timeout=fetch_timeout_s, cooldown_duration=min_refresh_s
        )
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.cache_s = cache_s
        self._verified: dict[str, tuple[Principal, float]] = {}

    def handles(self, token: str) -> bool:
        """True for a token whose (unverified) header names an algorithm this verifier checks."""
        try:
            return jwt.get_unverified_header(token).get("alg") in JWKS_ALGORITHMS
        except jwt.PyJWTError:
            return False

    async def verify(self, token: str) -> Principal:
        """The token's principal, or ApiError 401 (invalid/expired) or 503 (the JWKS cannot be fetched)."""
        known = self._verified.get(token)
        if known is not None:
            principal, until = known
            if time.time() < until:
                return principal
            del self._verified[token]
        try:
            key = await asyncio.to_thread(self.client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise ApiError(
                503,
                "identity_provider_unavailable",
                f"the identity provider's keys could not be fetched: {exc}",
                headers={"Retry-After": "5"},
            ) from None
        except jwt.PyJWKClientError as exc:  # no key with this kid, even after a refetch
            raise ApiError(401, "invalid_token", f"the bearer token is not valid: {exc}") from None
        except jwt.PyJWKSetError as exc:
            raise ApiError(
                503,
                "identity_provider_unavailable",
                f"the identity provider's key set is unusable: {exc}",
                headers={"Retry-After": "5"},
            ) from None
        except jwt.PyJWTError as exc:
            raise ApiError(401, "invalid_token", f"the bearer token is not valid: {exc}") from None
        principal, exp = self._check(token, key)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, min(exp, time.time() + self.cache_s))
        return principal

    def _check(self, token: str, key: Any) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(JWKS_ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token_expired", "the bearer token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "invalid_token", f"the bearer token is not valid: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ApiError(401, "invalid_token", "the bearer token lacks a valid sub")
        problem = operator_id_problem(sub)
        if problem:
            raise ApiError(401, "invalid_subject", f"the bearer token's sub {problem}")
        role = role_from_claim(claims, self.role_claim)
        if role is None:
            raise ApiError(
                401, "invalid_token", f"the bearer token's {self.role_claim!r} claim holds none of {', '.join(ROLES)}"
            )
        return Principal(sub=sub, role=role), float(claims["exp"])


def role_from_claim(claims: dict, claim: str) -> str | None:
    """The Switchboard role in `claim` (a dotted path such as `realm_access.roles`): a string or a list."""
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return value if value in ROLES else None
    if isinstance(value, list):
        return next((r for r in ROLE_PRECEDENCE if r in value), None)
    return None


def jwks_verifier(settings) -> JwksVerifier | None:
    """The JWKS verifier the settings describe, or None when SWITCHBOARD_AUTH_JWKS_URL is unset."""
    if not settings.auth_jwks_url:
        return None
    return JwksVerifier(
        settings.auth_jwks_url,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        role_claim=settings.auth_role_claim,
        cache_s=settings.auth_jwks_cache_s,
        min_refresh_s=settings.auth_jwks_min_refresh_s,
    )


def check_role(principal: Principal, roles: tuple[str, ...]) -> Principal:
    """The principal, if its role is one of `roles`; else ApiError 403."""
    if principal.role not in roles:
        raise ApiError(403, "forbidden_role", f"role {principal.role!r} may not call this; needs {' or '.join(roles)}")
    return principal


async def authorize(request: Request, *roles: str) -> Principal:
    """What `require(*roles)` does, for a route served outside FastAPI's dependencies (shared.http.HotRoute)."""
    return check_role(await _principal(request), roles)


def require(*roles: str):
    """A FastAPI dependency admitting only tokens whose role is one of `roles`."""
    # async on purpose: a plain function would be run in FastAPI's thread pool, two hops per request.

    async def dependency(principal: Principal = Depends(_principal)) -> Principal:
        return check_role(principal, roles)

    return dependency
