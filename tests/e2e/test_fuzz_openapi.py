"""Schemathesis against every service's OpenAPI document, the services running as real processes.

With valid tokens of the role each route admits, generated requests (valid and invalid ones,
a bounded number per operation) must never get a 5xx, and every answer must match the
document: a declared status code, the declared content type, a body that fits its schema.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import harness
from tests.conftest import BASE_URL, BOOTSTRAP
from tests.e2e.procs import Fleet, service_env

pytestmark = pytest.mark.timeout(300)

SERVICES = ("ingest", "assigner", "idle_monitor", "stats")
MAX_EXAMPLES = 40
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SKIPPED_PATHS = ("/metrics", "/docs", "/redoc", "/console")


def role_for(service: str, path: str) -> tuple[str, str]:
    """(role, subject) of a token this route admits."""
    if service == "ingest":
        return "frontend", "web-fuzz"
    if service == "assigner" and (path.startswith("/v1/assignments") or path.startswith("/v1/chats")):
        return "operator", "op-fuzz"
    return "admin", "admin-fuzz"


@pytest.fixture(scope="module")
async def fleet(infra, template_db, tmp_path_factory):
    """The four services as processes on a fresh database and topics."""
    env = await harness.make_env(BASE_URL, template_db, BOOTSTRAP)
    try:
        async with Fleet(
            env.settings,
            tmp_path_factory.mktemp("fuzz-logs"),
            SERVICES,
            env=service_env(env.settings, SWITCHBOARD_KAFKA_SEND_TIMEOUT_S="3"),
        ) as running:
            yield running
    finally:
        await harness.drop_database(BASE_URL, urlparse(env.database_url).path.lstrip("/"))
        await harness.delete_topics(BOOTSTRAP, env.settings.topic_prefix)


def describe(exc: BaseException) -> str:
    """A failure (or each failure of a group) as text: what was found and how to reproduce it."""
    parts = [str(e) for e in getattr(exc, "exceptions", ())] or [str(exc)]
    notes = "\n".join(getattr(exc, "__notes__", ()))[-1500:]
    return "\n".join(f"  - {type(exc).__name__}: {p.strip()[:1500]}" for p in parts) + f"\n{notes}"


def fuzz(base: str, service: str, checks: list, modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE)) -> dict:
    """Run generated requests against every operation of a service; returns each operation's failures."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(SKIPPED_PATHS):
            continue
        operations += 1
        role, sub = role_for(service, operation.path)
        headers = harness.token(sub, role)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case):
                try:
                    case.call_and_validate(base_url=base, headers=headers, checks=checks, timeout=20)
                except BaseException as exc:
                    exc.add_note(
                        "reproduce: "
                        + case.as_curl_command(headers={"Authorization": f"Bearer <{role} token>"}, base_url=base)
                    )
                    raise

            try:
                exercise()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs
                continue
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, report all
                failures[f"{operation.label} ({mode.value})"] = describe(exc)
    assert operations > 0, f"{service} documents no operation"
    return failures


def report(failures: dict) -> str:
    return "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


# One pass with every check: the generation is derandomized, so a second pass per check set would
# send the very same requests again.
@pytest.mark.parametrize("service", SERVICES)
def test_generated_requests_with_valid_tokens_never_get_a_5xx_and_every_answer_matches_the_document(fleet, service):
    failures = fuzz(fleet[service].url, service, [not_a_server_error, *CONFORMANCE])
    assert not failures, report(failures)
