"""Fixtures: real Kafka and Postgres (started by the project's own code), isolated per test."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from urllib.parse import urlparse

import pytest

from tests import harness

BASE_URL = os.environ.get("SWITCHBOARD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/switchboard")
BOOTSTRAP = os.environ.get("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


# The tools a fresh clone builds or fetches on first use, and the test files that use them.
PREFETCH = {
    "promtool": ({"test_deploy_static.py", "test_metrics_exposition.py"}, "deploy.local.tools:ensure_promtool"),
    "compose-check": ({"test_deploy_static.py"}, "deploy.local.tools:ensure_compose_check"),
    "kafka jars": (
        {"test_transient_failures.py", "test_survival_crash_restart.py"},
        "deploy.local.kafka:fetch_default_jars",
    ),
    "chromium": (
        {"test_console_browser.py", "test_delivery_console_browser.py", "test_delivery_widget_browser.py"},
        "deploy.local.browser:ensure_chromium",
    ),
}


def pytest_collection_finish(session):
    """Build and fetch, in a background thread at low priority, the tools later tests will need.

    On a fresh clone compose-check is a Go build (minutes on a cold Go cache) and the Kafka jars of
    the tests' own brokers a Maven run; on a fresh machine promtool and Chromium are apt installs.
    Here they overlap the first tests instead of stalling the one that needs them. Each ensure takes a lock, so that test waits for the work under way and then
    uses it; a failure here is left to that test to report.
    """
    files = {item.path.name for item in session.items}
    wanted = [target for name, (users, target) in PREFETCH.items() if files & users]
    if wanted:
        threading.Thread(target=_prefetch, args=(wanted,), name="prefetch-tools", daemon=True).start()


def _prefetch(targets: list[str]) -> None:
    import importlib

    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)  # this thread, and what it spawns
    for target in targets:
        module, name = target.split(":")
        try:
            getattr(importlib.import_module(module), name)()
        except Exception:
            pass


HANG_REPORT_S = 240  # pytest-timeout ends a test at 300 s; say where it hangs before that


def _report_hang(nodeid: str) -> None:
    print(f"\n=== {nodeid} still running after {HANG_REPORT_S}s; every asyncio task:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=15, file=sys.stderr)


@pytest.fixture(autouse=True)
async def hang_report(request):
    """On a test that hangs, print every task's and thread's stack (setup and teardown included)."""
    handle = asyncio.get_running_loop().call_later(HANG_REPORT_S, _report_hang, request.node.nodeid)
    faulthandler.dump_traceback_later(HANG_REPORT_S + 5, exit=False)
    yield
    faulthandler.cancel_dump_traceback_later()
    handle.cancel()


@pytest.fixture(scope="session")
def infra():
    """Kafka and Postgres are up (started by `switchboard infra up` when they are not)."""
    from switchboard.cli import infra_up_impl

    infra_up_impl(echo=lambda *_: None)
    return {"database_url": BASE_URL, "bootstrap": BOOTSTRAP}


@pytest.fixture(scope="session")
async def template_db(infra):
    """A migrated template database, copied for each test."""
    name = await harness.create_template(BASE_URL)
    yield name
    await harness.drop_database(BASE_URL, name)


@pytest.fixture
async def env(infra, template_db):
    """A fresh database and fresh topics for one test."""
    test_env = await harness.make_env(BASE_URL, template_db, BOOTSTRAP)
    yield test_env
    await harness.drop_database(BASE_URL, urlparse(test_env.database_url).path.lstrip("/"))
    await harness.delete_topics(BOOTSTRAP, test_env.settings.topic_prefix)
