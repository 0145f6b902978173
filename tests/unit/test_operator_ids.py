"""Operator ids are identity providers' subjects: any printable text of 1 to 255 characters.

The boundary is one rule (`shared.events.operator_id_problem`), applied where a subject enters
(token verification, ingest's body, the admin's reassign body, the stats path) and by every event
model that carries an operator id; chat and message ids keep their own, stricter pattern.
"""

import uuid

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.assigner import domain
from services.ingest.domain import MessageIn
from shared.auth import Principal, issue_token, require, verify_token
from shared.errors import ApiError
from shared.events import (
    AssignmentEndedPayload,
    AssignmentIdlePayload,
    ChatAnsweredPayload,
    ChatAssignedPayload,
    MessageRecordedPayload,
    OperatorMessagePayload,
    UserMessagePayload,
    operator_id_problem,
    utcnow,
)
from shared.http import create_app

SECRET = "unit-test-secret-0123456789abcdefghij"

REAL_WORLD_SUBJECTS = [
    "alice@example.com",
    "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b",
    "auth0|abc123",
    "google-oauth2|112233445566778899",
    "a/b%2Fc",
    "Ana María Pérez",
    "Łukasz Żółć",
    "操作员-七",
    "op?x=1&y=#frag",
    'quote"back\\slash',
    "x" * 255,
]
NOT_SUBJECTS = [
    ("", "empty"),
    ("x" * 256, "at most 255"),
    ("line\nbreak", "printable"),
    ("tab\there", "printable"),
    ("nul\x00", "printable"),
    ("zero\u200bwidth", "printable"),
    ("line\u2028separator", "printable"),
    ("del\x7f", "printable"),
]


@pytest.mark.parametrize("sub", REAL_WORLD_SUBJECTS)
def test_every_event_that_names_an_operator_accepts_a_real_world_subject(sub):
    now = utcnow()
    aid = uuid.uuid4()
    OperatorMessagePayload(message_id="m-1", operator_id=sub, text="hi")
    AssignmentIdlePayload(assignment_id=aid, operator_id=sub, deadline=now)
    MessageRecordedPayload(message_id="m-1", sender="operator", operator_id=sub, text="hi", recorded_at=now)
    ChatAssignedPayload(assignment_id=aid, operator_id=sub, assigned_at=now, via="pull")
    AssignmentEndedPayload(assignment_id=aid, operator_id=sub, outcome="answered", started_at=now, ended_at=now)
    ChatAnsweredPayload(operator_id=sub, answered_at=now)
    assert operator_id_problem(sub) is None


@pytest.mark.parametrize("sub,why", NOT_SUBJECTS)
def test_an_event_refuses_an_operator_id_that_is_empty_too_long_or_not_printable(sub, why):
    assert why in operator_id_problem(sub)
    with pytest.raises(ValidationError, match=why):
        ChatAssignedPayload(assignment_id=uuid.uuid4(), operator_id=sub, assigned_at=utcnow(), via="pull")


@pytest.mark.parametrize("chat_id", ["alice@example.com", "a/b", "x" * 129, "a b"])
def test_chat_ids_keep_their_own_pattern(chat_id):
    with pytest.raises(ValidationError):
        UserMessagePayload(message_id=chat_id, text="hi")


@pytest.mark.parametrize("sub", REAL_WORLD_SUBJECTS)
def test_the_domain_assigns_reassigns_and_hears_an_operator_with_a_real_world_subject(sub):
    now = utcnow()
    waiting = domain.Chat(chat_id="c-1", state=domain.WAITING, waiting_since=now, queued_at=now, message_count=1)
    pulled = domain.decide(waiting, domain.AssignToPuller(operator_id=sub, assignment_id=uuid.uuid4(), at=now))
    assert pulled.chat.assigned_operator_id == sub
    answered = domain.decide(
        pulled.chat,
        domain.ReceiveOperatorMessage(message_id="m-2", operator_id=sub, text="hello", sent_at=None, at=now),
    )
    assert [f.type for f in answered.facts] == ["message_recorded", "assignment_ended", "chat_answered"]
    again = domain.decide(answered.chat, domain.ReassignChat(operator_id=sub, assignment_id=uuid.uuid4(), at=now))
    assert again.chat.assigned_operator_id == sub


@pytest.mark.parametrize("sub", REAL_WORLD_SUBJECTS)
def test_ingest_accepts_an_operator_message_from_a_real_world_subject(sub):
    message = MessageIn(message_id="m-1", sender="operator", operator_id=sub, text="hello")
    assert message.operator_id == sub


@pytest.mark.parametrize("sub,why", NOT_SUBJECTS)
def test_ingest_refuses_an_operator_id_no_event_could_carry(sub, why):
    with pytest.raises(ValidationError, match=why):
        MessageIn(message_id="m-1", sender="operator", operator_id=sub, text="hello")


@pytest.fixture
def client():
    app = create_app("unit", title="unit", lifespan=None, readiness=None, auth_secret=SECRET)

    @app.get("/me")
    async def me(principal: Principal = Depends(require("operator"))):
        return {"sub": principal.sub}

    return TestClient(app)


@pytest.mark.parametrize("sub", REAL_WORLD_SUBJECTS)
def test_a_token_whose_sub_is_a_real_world_subject_is_accepted(client, sub):
    r = client.get("/me", headers={"Authorization": f"Bearer {issue_token(SECRET, sub, 'operator')}"})
    assert r.status_code == 200 and r.json() == {"sub": sub}


@pytest.mark.parametrize("sub,why", [s for s in NOT_SUBJECTS if s[0]])
def test_a_token_whose_sub_no_operator_id_could_be_is_a_clear_401(client, sub, why):
    r = client.get("/me", headers={"Authorization": f"Bearer {issue_token(SECRET, sub, 'operator')}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_subject" and why in r.json()["error"]["message"]
    with pytest.raises(ApiError):
        verify_token(SECRET, issue_token(SECRET, sub, "admin"))


def test_a_token_with_an_empty_sub_is_a_clear_401(client):
    r = client.get("/me", headers={"Authorization": f"Bearer {issue_token(SECRET, '', 'operator')}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
