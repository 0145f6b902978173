"""HS256 bearer tokens (SPEC §4): `sub` and `role` in {frontend, operator, admin}."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import jwt
from fastapi import Depends, Request

from shared.errors import ApiError

# `chat`: a chat id as `sub`, minted by delivery, lets a browser read and write only that chat (SPEC §9).
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
    return Principal(sub=sub, role=role), float(claims["exp"])


async def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_token", "an `Authorization: Bearer <token>` header is required")
    return verify_token(request.app.state.auth_secret, token.strip())


def require(*roles: str):
    """A FastAPI dependency admitting only tokens whose role is one of `roles`."""
    # async on purpose: a plain function would be run in FastAPI's thread pool, two hops per request.

    async def dependency(principal: Principal = Depends(_principal)) -> Principal:
        if principal.role not in roles:
            raise ApiError(403, "forbidden_role", f"role {principal.role!r} may not call this; needs {' or '.join(roles)}")
        return principal

    return dependency
