"""Every service's /metrics is valid Prometheus text (real promtool) and declares the metrics documented for it."""

from __future__ import annotations

import re
import subprocess

import pytest

from deploy.local.tools import ensure_promtool
from switchboard.services import NAMES
from tests import harness
from tests.integration.test_deploy_static import documented_metrics


@pytest.fixture(scope="module")
def promtool() -> str:
    """A real promtool (Debian's prometheus package, installed when missing)."""
    return ensure_promtool()


@pytest.mark.parametrize("name", NAMES)
async def test_metrics_endpoint_passes_promtool_and_declares_its_documented_metrics(name, env, promtool):
    async with harness.running(name, env.settings) as client:
        # One request first, so the HTTP metrics carry a sample of this service.
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool check metrics on {name}:\n{result.stdout}{result.stderr}"

    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    expected = {m.name for m in documented_metrics().values() if name in m.exposed_by}
    assert expected - declared == set(), f"{name} /metrics lacks metrics docs/metrics.md lists for it"
    own_requests = [
        line
        for line in text.splitlines()
        if line.startswith("switchboard_http_requests_total{")
        and f'service="{name}"' in line
        and 'route="/healthz"' in line
    ]
    assert own_requests, f"{name} did not count its own /healthz request"
