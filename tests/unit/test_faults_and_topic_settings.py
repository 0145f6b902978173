"""The crash-test fault hook (shared/faults.py) and the topic replication factor setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.kafka import admin as kafka
from shared.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "s" * 32


def run_points(points: list[str], **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports shared.faults with `env` and reaches `points` in order."""
    script = (
        "import sys\nfrom shared import faults\n"
        f"for p in {points!r}:\n    faults.reached(p)\n    print('passed', p, flush=True)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_an_unarmed_fault_point_does_nothing():
    done = run_points(["outbox_after_ack", "consumer_after_apply"] * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("passed") == 6


def test_an_armed_point_sigkills_the_process_on_its_nth_arrival_and_no_other_point_does():
    done = run_points(
        ["consumer_after_apply", "outbox_after_ack", "consumer_after_apply", "outbox_after_ack", "outbox_after_ack"],
        SWITCHBOARD_FAULT_POINT="outbox_after_ack",
        SWITCHBOARD_FAULT_HIT="2",
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split("\n")[:3] == [
        "passed consumer_after_apply",
        "passed outbox_after_ack",
        "passed consumer_after_apply",
    ]
    assert "passed" not in done.stdout.split("\n")[3]
    assert "fault injected: SIGKILL at outbox_after_ack (arrival 2)" in done.stderr


def test_an_unknown_fault_point_is_refused_at_start():
    done = run_points([], SWITCHBOARD_FAULT_POINT="outbox_after_akc")
    assert done.returncode == 1
    assert "SWITCHBOARD_FAULT_POINT='outbox_after_akc' is not one of" in done.stderr


def test_topic_replication_factor_defaults_to_one_and_comes_from_its_variable(monkeypatch):
    monkeypatch.delenv("SWITCHBOARD_TOPIC_REPLICATION_FACTOR", raising=False)
    assert Settings(auth_secret=SECRET).topic_replication_factor == 1
    monkeypatch.setenv("SWITCHBOARD_TOPIC_REPLICATION_FACTOR", "3")
    assert Settings(auth_secret=SECRET).topic_replication_factor == 3
    monkeypatch.setenv("SWITCHBOARD_TOPIC_REPLICATION_FACTOR", "0")
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", SECRET)
    with pytest.raises(ConfigError, match="SWITCHBOARD_TOPIC_REPLICATION_FACTOR"):
        load_settings()


class RecordingAdmin:
    """Stands in for AIOKafkaAdminClient: knows one topic, records what it is asked to create."""

    created: list = []

    def __init__(self, **_):
        pass

    async def start(self):
        pass

    async def close(self):
        pass

    async def list_topics(self):
        return ["p.chat.inbound"]

    async def create_topics(self, topics):
        RecordingAdmin.created.extend(topics)


async def test_ensure_topics_creates_missing_topics_with_the_configured_replication_factor(monkeypatch):
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", RecordingAdmin)
    RecordingAdmin.created = []
    settings = Settings(auth_secret=SECRET, topic_prefix="p.", topic_partitions=4, topic_replication_factor=3)
    missing = await kafka.ensure_topics(settings, ["chat.inbound", "chat.lifecycle", "chat.dlq"])
    assert missing == ["p.chat.lifecycle", "p.chat.dlq"]
    assert [(t.name, t.num_partitions, t.replication_factor) for t in RecordingAdmin.created] == [
        ("p.chat.lifecycle", 4, 3),
        ("p.chat.dlq", 4, 3),
    ]
