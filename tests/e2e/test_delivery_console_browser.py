"""The operator console on delivery's operator stream, in a real headless Chromium: live, without polling, with its queue's depth."""

import asyncio
import contextlib
import uuid

import httpx
from playwright.async_api import async_playwright

from deploy.local.browser import FLAGS, ensure_chromium
from shared.auth import issue_token
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, eventually


def bearer(sub, role):
    return {"Authorization": f"Bearer {issue_token(TEST_SECRET, sub, role)}"}


async def test_the_console_follows_its_chat_through_the_operator_stream_instead_of_polling(env):
    ports = {name: free_port() for name in ("ingest", "assigner", "delivery")}
    settings = env.with_settings(
        ingest_url=f"http://127.0.0.1:{ports['ingest']}", delivery_url=f"http://127.0.0.1:{ports['delivery']}"
    )
    chat = f"web-{uuid.uuid4().hex[:6]}"
    async with contextlib.AsyncExitStack() as stack:
        urls = {n: await stack.enter_async_context(serving(n, settings, p)) for n, p in ports.items()}
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))

        async def user_says(text):
            r = await http.post(
                f"{urls['ingest']}/v1/chats/{chat}/messages",
                headers=bearer("web", "frontend"),
                json={"message_id": uuid.uuid4().hex, "sender": "user", "text": text},
            )
            assert r.status_code == 202, r.text

        await user_says("hey")

        async def queued():
            r = await http.get(f"{urls['assigner']}/v1/admin/queue", headers=bearer("boss", "admin"))
            return r.json()["chats_by_state"]["waiting_assignment"] == 1

        await eventually(queued)
        pw = await stack.enter_async_context(async_playwright())
        browser = await pw.chromium.launch(executable_path=ensure_chromium(), args=FLAGS, headless=True)
        stack.push_async_callback(browser.close)
        page = await (await browser.new_context(viewport={"width": 1100, "height": 800})).new_page()
        polls = []
        page.on("request", lambda req: polls.append(req.url) if req.url.endswith("/v1/assignments/current") else None)
        streams = []
        page.on("request", lambda req: streams.append(req.url) if "/v1/operators/me/stream" in req.url else None)

        await page.goto(f"{urls['assigner']}/console/")
        await page.fill("#token-input", issue_token(TEST_SECRET, "op-live", "operator"))
        await page.click("#signin-form button")
        # The stream opens at sign-in: the operator's queues' depth before any assignment.
        await page.wait_for_selector("#depth >> text=default: 1 waiting", timeout=15000)
        await page.click("#next")
        await page.wait_for_selector("#depth >> text=default: 0 waiting", timeout=15000)
        await page.wait_for_selector(".msg.user >> text=hey")
        await eventually(lambda: _true(streams))
        await asyncio.sleep(1.5)  # the stream's replay may trigger one refresh
        before = len(polls)
        await asyncio.sleep(4.5)
        assert len(polls) - before == 0, "the console polled although its stream was open"

        await user_says("how are you?")
        await page.wait_for_selector(".msg.user >> text=how are you?", timeout=5000)
        assert len(polls) - before <= 2, "more than the stream-triggered refreshes"

        await page.fill("#reply", "Fine, thanks!")
        await page.click("#send")
        await page.wait_for_selector("text=no longer assigned to you", timeout=15000)

        # Another user starts a chat: the depth rises live, without a reload (only queue_depth events
        # render it: no request of the page reads a depth).
        r = await http.post(
            f"{urls['ingest']}/v1/chats/{chat}-2/messages",
            headers=bearer("web", "frontend"),
            json={"message_id": uuid.uuid4().hex, "sender": "user", "text": "anyone?"},
        )
        assert r.status_code == 202, r.text
        await page.wait_for_selector("#depth >> text=default: 1 waiting", timeout=15000)


async def _true(items):
    return bool(items)
