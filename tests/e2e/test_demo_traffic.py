"""The demo traffic generator moves chats through the states against real services."""

import contextlib

import httpx

from switchboard.demo import Demo
from tests.e2e.servers import free_port, serving
from tests.harness import eventually, token


async def test_the_demo_opens_chats_and_its_operators_answer_them(env):
    settings = env.with_settings(repeat_cooldown_s=1)
    ports = {name: free_port() for name in ("ingest", "assigner")}
    async with contextlib.AsyncExitStack() as stack:
        urls = {n: await stack.enter_async_context(serving(n, settings, p)) for n, p in ports.items()}
        demo = Demo(settings, rate=5, operators=2, ingest_url=urls["ingest"], assigner_url=urls["assigner"])
        await demo.run(duration=8)
        async with httpx.AsyncClient() as http:

            async def answered():
                r = await http.get(f"{urls['assigner']}/v1/admin/queue", headers=token("boss", "admin"))
                by_state = r.json()["chats_by_state"]
                return by_state if by_state["waiting_real_user_reply"] >= 1 else None

            by_state = await eventually(answered, timeout=20)
            admin = token("boss", "admin")
            queues = (await http.get(f"{urls['assigner']}/v1/admin/queues", headers=admin)).json()["queues"]
            profile = (await http.get(f"{urls['assigner']}/v1/admin/operators/demo-op-2", headers=admin)).json()
            in_queues = set()
            for chat_id in demo.open_chats:
                r = await http.get(f"{urls['assigner']}/v1/chats/{chat_id}", headers=admin)
                if r.status_code == 200:
                    in_queues.add(r.json()["queue_id"])
    assert sum(by_state.values()) >= 10
    # The demo routes: its queues exist, its operators have profiles, and its chats went into them.
    assert {"default", "sales", "support", "billing"} <= {q["queue_id"] for q in queues}
    assert set(profile["queues"]) == {"default", "sales", "billing"}
    assert profile["skills"] == ["de", "en"] and profile["display_name"] == "Demo operator 2"
    assert in_queues - {"default"}, in_queues
