"""`/asyncapi.json` and `/asyncapi` through the apps: the document of what the process's broker declares."""

from __future__ import annotations

import httpx
import pytest

from services.delivery.main import create_app as delivery_app
from shared import asyncapi
from shared.events import TOPIC_INBOUND, TOPIC_TIMEOUTS
from shared.http import service_app
from tests import fakes
from tests.harness import BoundedASGITransport
from tests.unit.test_asyncapi import PREFIX, declare_assigner, validate

SETTINGS = fakes.unit_settings()


async def ready() -> dict[str, bool]:
    return {}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=BoundedASGITransport(app=app), base_url="http://app")


async def test_the_app_serves_the_document_of_its_broker_and_its_page():
    broker = declare_assigner(SETTINGS)
    app = service_app("assigner", SETTINGS, title="t", lifespan=None, readiness=ready, broker=broker)
    async with client(app) as api:
        served = await api.get("/asyncapi.json")
        again = await api.get("/asyncapi.json")
        page = await api.get("/asyncapi")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    doc = served.json()
    validate(doc)
    assert doc == asyncapi.service_document(broker, "assigner", SETTINGS)
    assert again.content == served.content  # generating again changes nothing
    assert {c["address"] for c in doc["channels"].values()} >= {TOPIC_INBOUND, TOPIC_TIMEOUTS}
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<code>chat.timeouts</code>" in page.text and "<script" not in page.text
    assert PREFIX not in page.text.split("this deployment prefixes", 1)[0]


async def test_a_declaration_made_after_the_app_was_built_is_in_the_document():
    # Services declare while they start (in their lifespan): the document is generated per request.
    broker = declare_assigner(SETTINGS)
    app = service_app("assigner", SETTINGS, title="t", lifespan=None, readiness=ready, broker=broker)
    broker.publisher(SETTINGS.topic("chat.extra"), schema=dict)
    async with client(app) as api:
        doc = (await api.get("/asyncapi.json")).json()
    assert "chat.extra" in {c["address"] for c in doc["channels"].values()}


async def test_without_a_broker_there_is_no_document():
    app = service_app("stats", SETTINGS, title="t", lifespan=None, readiness=ready)
    async with client(app) as api:
        for path in ("/asyncapi.json", "/asyncapi"):
            response = await api.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("service", ["ingest", "assigner", "idle_monitor", "stats"])
async def test_every_service_serves_its_own_document_and_page(service):
    async with fakes.serving(fakes.build(service), service) as api:
        doc = (await api.get("/asyncapi.json")).json()
        page = await api.get("/asyncapi")
    validate(doc)
    assert doc["info"]["title"] == f"Switchboard {service}"
    assert all(name.startswith(f"{service}.") for name in doc["operations"])
    assert page.status_code == 200 and f"Switchboard {service}" in page.text


async def test_delivery_serves_its_own_document_and_page():
    async with client(delivery_app(SETTINGS)) as api:
        doc = (await api.get("/asyncapi.json")).json()
        page = await api.get("/asyncapi")
    validate(doc)
    assert doc["info"]["title"] == "Switchboard delivery"
    assert page.status_code == 200
