"""The routing screens (SPEC §8, "Screens") in a real headless Chromium, against the running services:
the console's presence and queues, the admin page's queues and operator profiles."""

import contextlib
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
from playwright.async_api import async_playwright

from deploy.local.browser import FLAGS, ensure_chromium
from shared.auth import issue_token
from tests.e2e.servers import free_port, serving
from tests.harness import TEST_SECRET, eventually

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
ADMIN = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'boss', 'admin')}"}


@contextlib.asynccontextmanager
async def running(env, *names):
    """The named services on loopback ports, an HTTP client and a headless Chromium, for one test."""
    ports = {name: free_port() for name in names}
    settings = env.with_settings(
        **{f"{n}_url": f"http://127.0.0.1:{p}" for n, p in ports.items() if n in ("ingest", "stats", "delivery")}
    )
    async with contextlib.AsyncExitStack() as stack:
        urls = {n: await stack.enter_async_context(serving(n, settings, p)) for n, p in ports.items()}
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10, headers=ADMIN))
        pw = await stack.enter_async_context(async_playwright())
        browser = await pw.chromium.launch(executable_path=ensure_chromium(), args=FLAGS, headless=True)
        stack.push_async_callback(browser.close)
        yield urls, http, browser


async def signed_in(browser, url, token):
    """A new page on `url`, signed in with `token`."""
    page = await (await browser.new_context(viewport={"width": 1200, "height": 900})).new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Remove …?" confirmations
    await page.goto(url)
    await page.fill("#signin-form input", token)
    await page.click("#signin-form button")
    return page


async def put(http, url, body):
    """PUT as the admin; 201 created, 200 replaced."""
    r = await http.put(url, json=body)
    assert r.status_code in (200, 201), r.text
    return r


async def user_says(http, urls, chat, text):
    r = await http.post(
        f"{urls['ingest']}/v1/chats/{chat}/messages",
        headers={"Authorization": f"Bearer {issue_token(TEST_SECRET, 'web', 'frontend')}"},
        json={"message_id": uuid.uuid4().hex, "sender": "user", "text": text},
    )
    assert r.status_code == 202, r.text


async def test_an_operator_sees_its_queues_and_switches_its_status_in_the_console(env):
    SHOTS.mkdir(parents=True, exist_ok=True)
    chat = f"web-{uuid.uuid4().hex[:6]}"
    async with running(env, "ingest", "assigner") as (urls, http, browser):
        admin = f"{urls['assigner']}/v1/admin"
        extra = [f"team-{i:02d}" for i in range(24)]
        for q in extra:
            await put(http, f"{admin}/queues/{q}", {"name": f"Team {q[-2:]}"})
        await put(
            http,
            f"{admin}/operators/op-route",
            {"display_name": "Route", "queues": ["default", *extra], "skills": [], "capacity": 1},
        )
        await user_says(http, urls, chat, "hey")

        async def queued():
            r = await http.get(f"{urls['assigner']}/v1/admin/queue")
            return r.json()["chats_by_state"]["waiting_assignment"] == 1

        await eventually(queued)

        page = await signed_in(
            browser, f"{urls['assigner']}/console/", issue_token(TEST_SECRET, "op-route", "operator")
        )
        await page.wait_for_selector("#my-status >> text=available")
        # 25 queues, 20 a page
        await page.wait_for_selector("#my-queues-page >> text=queues 1–20 of 25")
        assert await page.locator("#my-queues li").count() == 20
        assert await page.locator('#my-queues li[data-queue="default"]').count() == 1
        await page.click("#my-queues-next")
        await page.wait_for_selector("#my-queues-page >> text=queues 21–25 of 25")
        assert await page.locator("#my-queues li").count() == 5
        assert await page.locator('#my-queues li[data-queue="team-23"]').count() == 1
        assert not await page.locator("#my-queues-next").is_enabled()

        await page.click("#next")
        await page.wait_for_selector(f"text=Chat {chat}")

        async def status_is(expected):
            r = await http.get(f"{admin}/operators/op-route")
            return r.json()["status"] == expected

        # Away: the chat stays, no new one can be pulled.
        await page.click('#status-buttons button[data-status="away"]')
        await page.wait_for_selector("#my-status >> text=away")
        await eventually(lambda: status_is("away"))
        assert not await page.locator("#next").is_enabled()
        assert await page.locator(f"text=Chat {chat}").is_visible()
        await page.screenshot(path=str(SHOTS / "console-away.png"))

        # Offline: the held chat goes back to its queue at once, and the console says so.
        await page.click('#status-buttons button[data-status="offline"]')
        await page.wait_for_selector("#my-status >> text=offline")
        await page.wait_for_selector("text=no longer assigned to you", timeout=10000)
        r = await http.get(f"{urls['assigner']}/v1/chats/{chat}")
        assert r.json()["state"] == "waiting_assignment", r.text

        # An admin sets it available again: the console follows within its refresh.
        await put(http, f"{admin}/operators/op-route/status", {"status": "available"})
        await page.wait_for_selector("#my-status >> text=available", timeout=10000)
        assert await page.locator("#next").is_enabled()
        # The pull is accepted again; the returned chat is not offered back to it (anti-repeat cooldown).
        await page.click("#next")
        await page.wait_for_selector("#status >> text=Nothing is waiting for you right now.")
        await page.screenshot(path=str(SHOTS / "console-available.png"))

        # Signing out hides the panel with the rest; an admin's token never shows it.
        await page.click("#signout")
        await page.locator("#presence").wait_for(state="hidden")
        await page.fill("#signin-form input", ADMIN["Authorization"][7:])
        await page.click("#signin-form button")
        assert await page.locator("#presence").is_hidden()


async def test_an_admin_manages_queues_and_operators_and_sees_depth_oldest_wait_and_sla(env):
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with running(env, "ingest", "assigner", "stats") as (urls, http, browser):
        admin = f"{urls['assigner']}/v1/admin"
        page = await signed_in(browser, f"{urls['assigner']}/console/admin.html", ADMIN["Authorization"][7:])
        await page.wait_for_selector('#queues tr[data-queue="default"]')
        assert not await page.locator('#queues tr[data-queue="default"] button.danger').is_enabled()

        # Create a queue, then edit it.
        await page.fill("#queue-id", "billing")
        await page.fill("#queue-name", "Billing")
        await page.fill("#queue-sla_first_assignment_s", "30")
        await page.fill("#queue-skills_relax_after_s", "120")
        await page.click("#queue-save")
        row = page.locator('#queues tr[data-queue="billing"]')
        await row.wait_for()
        assert await row.locator("td").nth(1).text_content() == "Billing"
        assert "SLA 30 s" in await row.locator(".settings").text_content()
        assert "skills relax 120 s" in await row.locator(".settings").text_content()
        await row.locator("text=Edit").click()
        assert await page.input_value("#queue-sla_first_assignment_s") == "30"
        await page.fill("#queue-name", "Billing EU")
        await page.click("#queue-save")
        await page.wait_for_selector('#queues tr[data-queue="billing"] >> text=Billing EU')
        body = (await http.get(f"{admin}/queues/billing")).json()
        assert (body["name"], body["sla_first_assignment_s"], body["skills_relax_after_s"]) == ("Billing EU", 30, 120)

        # Depth and oldest wait: three chats waiting in billing for 90 s.
        conn = await env.connect()
        try:
            await conn.executemany(
                "INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, rank, queue_id, message_count,"
                " created_at, updated_at) VALUES ($1, 'waiting_assignment', now() - interval '90 seconds',"
                " now() - interval '90 seconds', now() - interval '90 seconds', 'billing', 1, now(), now())",
                [(f"billing-{i}",) for i in range(3)],
            )
        finally:
            await conn.close()
        await page.wait_for_selector('#queues tr[data-queue="billing"] .waiting >> text=3', timeout=10000)
        oldest = await row.locator(".oldest").text_content()
        assert re.fullmatch(r"(9\d|1\d\d) s", oldest), oldest
        listed = {q["queue_id"]: q for q in (await http.get(f"{admin}/queues")).json()["queues"]}
        assert listed["billing"]["waiting"] == 3 and listed["billing"]["oldest_waiting_s"] >= 90
        assert (listed["default"]["waiting"], listed["default"]["oldest_waiting_s"]) == (0, None)

        # SLA today: a chat through ingest into default, pulled at once, counted by stats.
        chat = f"web-{uuid.uuid4().hex[:6]}"
        await user_says(http, urls, chat, "hey")
        operator = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'op-sla', 'operator')}"}

        async def pulled():
            r = await http.post(f"{urls['assigner']}/v1/assignments/next", headers=operator)
            return r.status_code == 200 and r.json()["chat"]["chat_id"] == chat

        await eventually(pulled)
        await page.wait_for_selector(
            '#queues tr[data-queue="default"] .sla >> text=100% (1/1 within 60 s)', timeout=15000
        )
        assert "no first assignment" in await row.locator(".sla").text_content()
        await page.screenshot(path=str(SHOTS / "admin-queues.png"))

        # Operator profiles: create (an id with `/` and a space), refuse an unknown queue, set status, remove.
        sub = "ops/ana lima"
        await page.fill("#profile-id", sub)
        await page.fill("#profile-name", "Ana")
        await page.fill("#profile-queues", "default, billing")
        await page.fill("#profile-skills", "fr")
        await page.fill("#profile-capacity", "2")
        await page.click("#profile-save")
        prow = page.locator(f'#profiles tr[data-profile="{sub}"]')
        await prow.wait_for()
        assert await prow.locator(".queues").text_content() == "default, billing"
        assert await prow.locator(".capacity").text_content() == "2"
        await page.fill("#profile-id", "op-nowhere")
        await page.fill("#profile-queues", "no-such-queue")
        await page.click("#profile-save")
        await page.wait_for_selector("#profiles-status.error")
        assert (await http.get(f"{admin}/operators/op-nowhere")).status_code == 404

        await page.click("#profile-new")
        await prow.locator("text=Edit").click()
        assert await page.input_value("#profile-skills") == "fr"
        await page.fill("#profile-capacity", "3")
        await page.click("#profile-save")
        await page.wait_for_selector(f'#profiles tr[data-profile="{sub}"] .capacity >> text=3')

        await prow.locator("select").select_option("away")
        path = f"{admin}/operators/{quote(sub, safe='')}"

        async def away():
            return (await http.get(path)).json()["status"] == "away"

        await eventually(away)
        await page.screenshot(path=str(SHOTS / "admin-operators.png"))
        await prow.locator("button.danger").click()
        await prow.wait_for(state="detached")
        assert (await http.get(path)).status_code == 404

        # Removing billing moves its three waiting chats to default.
        await row.locator("button.danger").click()
        await row.wait_for(state="detached")
        await page.wait_for_selector('#queues tr[data-queue="default"] .waiting >> text=3', timeout=10000)

        # Both lists show 100 rows a page.
        for i in range(120):
            await put(http, f"{admin}/queues/q-{i:03d}", {"name": f"Queue {i}"})
            await put(http, f"{admin}/operators/op-{i:03d}", {"display_name": f"Op {i}", "queues": ["default"]})
        await page.wait_for_selector("#queues-page >> text=page 1 · 100 row(s) · more on the next page", timeout=10000)
        await page.wait_for_selector("#profiles-page >> text=page 1 · 100 row(s) · more on the next page")
        assert await page.locator("#queues tr").count() == 100
        await page.click("#queues-next")
        await page.wait_for_selector("#queues-page >> text=page 2 · 21 row(s)")  # 120 + default
        assert await page.locator('#queues tr[data-queue="q-119"]').count() == 1
        assert not await page.locator("#queues-next").is_enabled()
        await page.click("#profiles-next")
        await page.wait_for_selector("#profiles-page >> text=page 2 · 20 row(s)")
        assert await page.locator('#profiles tr[data-profile="op-119"]').count() == 1
        await page.click("#profiles-prev")
        await page.wait_for_selector("#profiles-page >> text=page 1 · 100 row(s)")
        await page.screenshot(path=str(SHOTS / "admin-routing-pages.png"))
