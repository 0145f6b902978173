"""Operators' commands applied together in one transaction (Assigner.operator_batch), against real Postgres."""

import asyncio
import uuid

from services.assigner.domain import AssignmentNotActive, NotYourAssignment, UnknownAssignment
from services.assigner.usecases import OperatorCommand, Pulled
from tests.harness import Producer, running, token
from tests.integration.test_assigner_flow import cid, open_chat, pull


async def test_a_chat_released_in_a_batch_goes_to_another_puller_of_the_same_batch(env):
    older, newer = cid(), cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, older)
        first = await pull(api, "op-a")
        assert first["chat"]["chat_id"] == older
        await open_chat(env, kafka, newer)
        store = api.app.state.assigner
        results, _ = await store.operator_batch(
            [
                OperatorCommand("release", "op-a", uuid.UUID(first["assignment_id"])),
                OperatorCommand("pull", "op-b"),
            ]
        )
        assert results[0] == older
        pulled, view = results[1]
        # The released chat kept its place at the head of the queue, so op-b gets it, not the newer one.
        assert pulled.new and pulled.chat_id == older and view["state"] == "assigned"
        assert view["assigned_operator_id"] == "op-b" and view["last_operator_id"] == "op-a"


async def test_each_command_of_a_batch_gets_its_own_answer(env):
    chat = cid()
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        await open_chat(env, kafka, chat)
        mine = await pull(api, "op-a")
        store = api.app.state.assigner
        a_id = uuid.UUID(mine["assignment_id"])
        results, _ = await store.operator_batch(
            [
                OperatorCommand("release", "op-b", a_id),  # not theirs
                OperatorCommand("release", "op-a", uuid.uuid4()),  # no such assignment
                OperatorCommand("pull", "op-a"),  # at capacity: the current one
                OperatorCommand("pull", "op-c"),  # nothing waits
            ]
        )
        assert isinstance(results[0], NotYourAssignment)
        assert isinstance(results[1], UnknownAssignment)
        current, view = results[2]
        assert not current.new and current.assignment_id == a_id and view["chat_id"] == chat
        assert results[3] == (Pulled(None, None, None, new=False), None)
        # Releases and completions apply before the pulls of their batch.
        results, _ = await store.operator_batch(
            [
                OperatorCommand("pull", "op-a"),
                OperatorCommand("complete", "op-a", a_id),
                OperatorCommand("release", "op-a", a_id),  # already ended by the completion
            ]
        )
        assert results[0] == (Pulled(None, None, None, new=False), None)  # free now, and nothing waits
        assert results[1] == chat
        assert isinstance(results[2], AssignmentNotActive)


async def test_concurrent_pulls_of_one_operator_give_one_assignment(env):
    chats = [cid() for _ in range(3)]
    async with running("assigner", env.settings) as api, Producer(env.settings) as kafka:
        for chat in chats:
            await open_chat(env, kafka, chat)
        answers = await asyncio.gather(*(api.post("/v1/assignments/next", headers=token("op-a")) for _ in range(8)))
        assert {r.status_code for r in answers} == {200}
        assert len({r.json()["assignment_id"] for r in answers}) == 1
        queue = await api.get("/v1/admin/queue", headers=token("boss", "admin"))
        assert queue.json()["chats_by_state"]["waiting_assignment"] == 2
