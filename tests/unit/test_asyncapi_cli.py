"""`switchboard asyncapi`: the system's document from each service's declarations, without Kafka."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from switchboard.cli import app
from tests.harness import TEST_SECRET
from tests.unit.test_asyncapi import validate


@pytest.fixture
def cli(monkeypatch):
    # A secret of its own, so the command does not fall back to the development one in this process's environment.
    monkeypatch.setenv("SWITCHBOARD_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("SWITCHBOARD_TOPIC_PREFIX", "cli.")
    # Nothing may connect: an address where no broker listens.
    monkeypatch.setenv("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    return CliRunner()


def test_the_whole_document_is_valid_asyncapi(cli):
    result = cli.invoke(app, ["asyncapi"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate(doc)
    assert doc["info"]["title"] == "Switchboard" and "`cli.`" in doc["info"]["description"]
    assert {c["address"] for c in doc["channels"].values()} == {
        "chat.inbound",
        "chat.timeouts",
        "chat.lifecycle",
        "chat.dlq",
    }
    # what each service's wiring declares: every producer and every consumer group of the system
    assert {
        "ingest.send.chat.inbound",
        "assigner.receive.chat.inbound",
        "assigner.receive.chat.timeouts",
        "idle_monitor.send.chat.timeouts",
        "assigner.send.chat.lifecycle",
        "idle_monitor.receive.chat.lifecycle",
        "stats.receive.chat.lifecycle",
        "delivery.receive.chat.lifecycle",
    } <= set(doc["operations"])


def test_a_service_is_documented_by_what_its_wiring_declares(cli):
    # stats' bootstrap declares its consumer group on its broker; nothing connects.
    result = cli.invoke(app, ["asyncapi", "--service", "stats"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    validate(doc)
    assert doc["info"]["title"] == "Switchboard stats"
    assert list(doc["operations"]) == ["stats.receive.chat.lifecycle", "stats.send.chat.dlq"]  # it dead-letters too
    assert doc["operations"]["stats.receive.chat.lifecycle"]["bindings"]["kafka"]["groupId"]["enum"] == ["stats"]


def test_the_page_is_written_to_a_file(cli, tmp_path):
    out = tmp_path / "asyncapi.html"
    result = cli.invoke(app, ["asyncapi", "-s", "stats", "--html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<code>chat.lifecycle</code>" in page and "<script" not in page


def test_an_unknown_service_is_refused(cli):
    result = cli.invoke(app, ["asyncapi", "-s", "nope"])
    assert result.exit_code == 2
    assert "unknown service nope" in result.stderr
