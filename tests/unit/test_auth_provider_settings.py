"""Identity-provider settings and the role claim (issue 13, item 10), without a network."""

import pytest

from shared.auth import role_from_claim
from shared.settings import ConfigError, load_settings

SECRET = "unit-test-secret-0123456789abcdefghij"


@pytest.mark.parametrize(
    "claims,claim,role",
    [
        ({"role": "operator"}, "role", "operator"),
        ({"role": "root"}, "role", None),
        ({"roles": ["offline_access", "frontend"]}, "roles", "frontend"),
        ({"roles": ["operator", "admin"]}, "roles", "admin"),
        ({"roles": []}, "roles", None),
        ({"realm_access": {"roles": ["operator"]}}, "realm_access.roles", "operator"),
        ({"realm_access": ["operator"]}, "realm_access.roles", None),
        ({"role": 3}, "role", None),
        ({}, "role", None),
    ],
)
def test_the_role_comes_from_a_string_or_list_claim_at_a_dotted_path(claims, claim, role):
    assert role_from_claim(claims, claim) == role


def test_a_jwks_url_without_issuer_and_audience_fails_naming_the_variables(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_AUTH_JWKS_URL", "https://idp.example.test/jwks.json")
    with pytest.raises(ConfigError, match="SWITCHBOARD_AUTH_ISSUER and SWITCHBOARD_AUTH_AUDIENCE"):
        load_settings()
    monkeypatch.setenv("SWITCHBOARD_AUTH_ISSUER", "https://idp.example.test")
    monkeypatch.setenv("SWITCHBOARD_AUTH_AUDIENCE", "switchboard")
    monkeypatch.setenv("SWITCHBOARD_AUTH_ROLE_CLAIM", "roles")
    settings = load_settings()
    assert (settings.auth_jwks_url, settings.auth_role_claim) == ("https://idp.example.test/jwks.json", "roles")


def test_without_a_jwks_url_only_the_shared_secret_signs_tokens(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", SECRET)
    settings = load_settings()
    assert settings.auth_jwks_url is None and settings.auth_role_claim == "role"
