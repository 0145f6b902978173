"""The demo chat widget in a real headless Chromium: the user's side of a conversation, across a delivery crash."""

import contextlib
import uuid
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from deploy.local.browser import FLAGS, ensure_chromium
from shared.auth import issue_token
from tests.e2e.procs import ServiceProcess
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, eventually

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def bearer(sub, role):
    return {"Authorization": f"Bearer {issue_token(TEST_SECRET, sub, role)}"}


async def test_the_widget_shows_the_operators_replies_live_and_misses_nothing_across_a_delivery_restart(env, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("ingest", "assigner", "delivery")}
    settings = env.with_settings(
        ingest_url=f"http://127.0.0.1:{ports['ingest']}", dev_mode=True, delivery_heartbeat_s=2
    )
    chat = f"web-{uuid.uuid4().hex[:6]}"
    delivery = ServiceProcess("delivery", settings, tmp_path, port=ports["delivery"])
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(delivery.kill)
        delivery.start()
        await delivery.wait_ready()
        urls = {n: await stack.enter_async_context(serving(n, settings, ports[n])) for n in ("ingest", "assigner")}
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))

        async def operator_takes_and_replies(operator, text):
            async def pulled():
                r = await http.post(f"{urls['assigner']}/v1/assignments/next", headers=bearer(operator, "operator"))
                return r.status_code == 200 and r.json()["chat"]["chat_id"] == chat

            await eventually(pulled)
            r = await http.post(
                f"{urls['ingest']}/v1/chats/{chat}/messages",
                headers=bearer(operator, "operator"),
                json={"message_id": uuid.uuid4().hex, "sender": "operator", "operator_id": operator, "text": text},
            )
            assert r.status_code == 202, r.text

        pw = await stack.enter_async_context(async_playwright())
        browser = await pw.chromium.launch(executable_path=ensure_chromium(), args=FLAGS, headless=True)
        stack.push_async_callback(browser.close)
        page = await (await browser.new_context(viewport={"width": 600, "height": 800})).new_page()
        await page.goto(f"{delivery.url}/widget/?chat={chat}")
        await page.wait_for_selector('#status[data-state="live"]')

        await page.fill("#text", "hello, anyone there?")
        await page.click("#send")
        await page.wait_for_selector(".msg.user >> text=hello, anyone there?")
        await operator_takes_and_replies("op-w", "Hi! How can I help?")
        await page.wait_for_selector(".note.operator_joined >> text=op-w joined the chat", timeout=15000)
        await page.wait_for_selector(".msg.operator >> text=Hi! How can I help?", timeout=15000)
        assert await page.locator(".msg.operator .who").first.inner_text() == "op-w"
        await page.screenshot(path=str(SHOTS / "widget-reply.png"))

        # Delivery dies; the user keeps writing (through ingest) and the operator answers meanwhile.
        delivery.kill()
        await page.wait_for_selector('#status[data-state="connecting"]', timeout=15000)
        await page.fill("#text", "my order is late")
        await page.click("#send")
        await eventually(lambda: page.evaluate("document.querySelector('#text').value === ''"))
        # (A colleague takes it: the same operator may not pull its last chat again within the cooldown.)
        await operator_takes_and_replies("op-x", "Sorry! It ships today.")
        delivery.start()
        await delivery.wait_ready()

        await page.wait_for_selector(".msg.operator >> text=Sorry! It ships today.", timeout=30000)
        await page.wait_for_selector('#status[data-state="live"]')
        texts = await page.locator(".msg").all_inner_texts()
        assert [t.replace("\n", " ").strip() for t in texts] == [
            "hello, anyone there?",
            "op-w Hi! How can I help?",
            "my order is late",
            "op-x Sorry! It ships today.",
        ]
        assert await page.locator(".note.operator_joined").count() == 2
        await page.screenshot(path=str(SHOTS / "widget-after-restart.png"))
