"""The assigner split in three processes (SWITCHBOARD_ASSIGNER_MODE): an HTTP API, a worker and a relay."""

from shared.events import TOPIC_INBOUND
from tests.harness import Producer, eventually, running, token, user_message
from tests.integration.test_assigner_flow import cid, wait_state


async def test_the_worker_applies_kafka_traffic_the_api_serves_operators_and_the_relay_publishes_facts(env):
    chat = cid()
    api_settings = env.with_settings(assigner_mode="api")
    worker_settings = env.with_settings(assigner_mode="worker")
    relay_settings = env.with_settings(assigner_mode="relay")
    async with running("assigner", api_settings) as api, Producer(env.settings) as kafka:
        ready = (await api.get("/readyz")).json()
        # HTTP only: no consumer to watch and no Kafka dependency for readiness.
        assert ready["status"] == "ready" and "consumers" not in ready["checks"] and "kafka" not in ready["checks"]
        await kafka.send(TOPIC_INBOUND, user_message(chat, "hello"))
        assert (await api.post("/v1/assignments/next", headers=token("op-a"))).status_code == 204  # not applied
        async with running("assigner", worker_settings) as worker:
            assert (await worker.get("/readyz")).json()["checks"]["consumers"] is True
            await wait_state(env, chat, "waiting_assignment")
            pulled = await api.post("/v1/assignments/next", headers=token("op-a"))
            assert pulled.status_code == 200 and pulled.json()["chat"]["chat_id"] == chat
            # Neither the API nor the worker publishes facts: they wait in the shared outbox (the
            # worker's chat_queued and the API's chat_assigned) until the relay runs.
            conn = await env.connect()
            try:
                assert await conn.fetchval("SELECT count(*) FROM assigner.outbox WHERE chat_id = $1", chat) >= 2
                async with running("assigner", relay_settings) as relay:
                    ready = (await relay.get("/readyz")).json()
                    assert ready["status"] == "ready" and "consumers" not in ready["checks"]
                    await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM assigner.outbox"), timeout=20)
            finally:
                await conn.close()
