"""The operator console and admin page in a real headless Chromium, against the running services."""

import contextlib
import json
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
from playwright.async_api import async_playwright

from deploy.local.browser import FLAGS, ensure_chromium
from shared.auth import issue_token
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, eventually

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


class _RawUtf8(json.JSONEncoder):
    """JSON with non-ASCII letters as UTF-8 bytes, not \\u escapes: what many identity providers sign."""

    def __init__(self, *args, **kwargs):
        kwargs["ensure_ascii"] = False
        super().__init__(*args, **kwargs)


def utf8_token(sub: str, role: str) -> str:
    """A valid HS256 token whose payload carries `sub` as raw UTF-8."""
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "role": role, "iat": now, "exp": now + 3600}, TEST_SECRET, algorithm="HS256", json_encoder=_RawUtf8
    )


def bearer(sub, role):
    return {"Authorization": f"Bearer {issue_token(TEST_SECRET, sub, role)}"}


# A plain id, and a real identity provider's subject with non-ASCII letters, a space, `/` and markup
# (the console decodes the token's claims as UTF-8 and shows ids as text, never as HTML).
@pytest.mark.parametrize("sub", ["op-web", "Łukasz Żółć <b>ops</b>/night"], ids=["plain", "unicode-subject"])
async def test_an_operator_takes_a_chat_sees_new_messages_and_replies_in_the_browser(env, sub):
    shot = "" if sub == "op-web" else "-unicode"
    SHOTS.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("ingest", "assigner", "stats")}
    settings = env.with_settings(
        ingest_url=f"http://127.0.0.1:{ports['ingest']}", stats_url=f"http://127.0.0.1:{ports['stats']}"
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

        await page.goto(f"{urls['assigner']}/console/")
        await page.fill("#token-input", utf8_token(sub, "operator"))
        await page.click("#signin-form button")
        assert await page.locator("#who").text_content() == f"signed in as {sub}"
        await page.click("#next")
        await page.wait_for_selector(f"text=Chat {chat}")
        await page.wait_for_selector(".msg.user >> text=hey")
        await page.screenshot(path=str(SHOTS / f"console-assigned{shot}.png"))

        await user_says("how are you?")
        await page.wait_for_selector(".msg.user >> text=how are you?", timeout=15000)
        assert await page.locator(".msg.user").count() == 2
        await page.screenshot(path=str(SHOTS / f"console-second-message{shot}.png"))

        await page.fill("#reply", "Hi! I'm well, how can I help?")
        await page.click("#send")
        await page.wait_for_selector("text=no longer assigned to you", timeout=15000)

        async def answered():
            r = await http.get(f"{urls['assigner']}/v1/chats/{chat}", headers=bearer("boss", "admin"))
            body = r.json()
            return body if body["state"] == "waiting_real_user_reply" else None

        body = await eventually(answered)
        assert body["last_operator_id"] == sub
        assert [m["sender"] for m in body["messages"]] == ["user", "user", "operator"]
        assert body["messages"][-1]["operator_id"] == sub

        async def counted():  # through a real server: `/` in the id travels as %2F
            r = await http.get(
                f"{urls['stats']}/v1/operators/{quote(sub, safe='')}/stats",
                headers={"Authorization": f"Bearer {utf8_token(sub, 'operator')}"},
            )
            assert r.status_code == 200, r.text
            return r.json() if r.json()["messages_sent"] == 1 else None

        assert (await eventually(counted))["operator_id"] == sub

        admin = await (await browser.new_context(viewport={"width": 1100, "height": 900})).new_page()
        await admin.goto(f"{urls['assigner']}/console/admin.html")
        await admin.fill("#signin-form input", issue_token(TEST_SECRET, "boss", "admin"))
        await admin.click("#signin-form button")
        await admin.wait_for_selector('[data-state="waiting_real_user_reply"] >> text=1')
        row = admin.locator(f'[data-operator="{sub}"]')
        await row.wait_for(timeout=15000)
        assert (await row.locator("td").first.text_content()) == sub
        await admin.screenshot(path=str(SHOTS / f"admin{shot}.png"))

        # The stuck-chats list shows one page (100 rows) and a working "Next page" control.
        conn = await env.connect()
        try:
            await conn.executemany(
                "INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, message_count, created_at,"
                " updated_at) VALUES ($1, 'waiting_assignment', now() - interval '1 hour', now() - interval '1 hour',"
                " 1, now(), now())",
                [(f"stuck-{i:03d}",) for i in range(130)],
            )
        finally:
            await conn.close()
        await admin.click("#load-stuck")
        await admin.wait_for_selector("#stuck-page >> text=page 1 · 100 row(s) · more on the next page")
        assert await admin.locator("#stuck tr").count() == 100
        assert await admin.locator("#stuck-next").is_enabled()
        await admin.click("#stuck-next")
        await admin.wait_for_selector("#stuck-page >> text=page 2 · 30 row(s)")
        assert await admin.locator("#stuck tr").count() == 30
        assert await admin.locator('#stuck tr[data-chat="stuck-129"]').count() == 1
        assert not await admin.locator("#stuck-next").is_enabled()
        await admin.screenshot(path=str(SHOTS / f"admin-stuck-page-2{shot}.png"))

        # The session both pages share (console.js): signing out shows the sign-in card again, and a
        # token of another role does not open the admin board.
        await admin.click("#signout")
        await admin.locator("#signin").wait_for(state="visible")
        assert await admin.locator("#board").is_hidden() and await admin.locator("#signout").is_hidden()
        await admin.fill("#signin-form input", issue_token(TEST_SECRET, "op-x", "operator"))
        await admin.click("#signin-form button")
        assert await admin.locator("#signin").is_visible() and await admin.locator("#board").is_hidden()
