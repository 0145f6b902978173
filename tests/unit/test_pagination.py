"""Opaque list cursors: a cursor round-trips to its key; anything else is a 422 `invalid_cursor`.

Walking real pages stays in tests/integration/test_pagination.py.
"""

import pytest

from shared.errors import ApiError
from shared.pagination import decode_cursor, encode_cursor
from tests import fakes
from tests.harness import token


def test_a_cursor_gives_back_the_key_it_was_made_from_and_the_first_page_has_none():
    key = ["2026-01-01T00:00:00.000001+00:00", "chat/with spaces|ü"]
    assert decode_cursor("list-a", encode_cursor("list-a", key), 2) == key
    assert decode_cursor("list-a", None, 2) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "nope",
        "%%%",
        "ü",
        "e30",
        encode_cursor("list-b", ["x", "y"]),
        encode_cursor("list-a", ["x"]),
        encode_cursor("list-a", ["x", 1]),
        encode_cursor("list-a", ["x", "nul\x00"]),
        "bnVsbA",  # JSON null
    ],
)
def test_a_cursor_this_list_did_not_issue_is_a_422(cursor):
    with pytest.raises(ApiError) as caught:
        decode_cursor("list-a", cursor, 2)
    assert caught.value.status == 422 and caught.value.code == "invalid_cursor"


async def test_stuck_chats_refuse_a_bad_cursor_or_limit_with_a_json_422():
    admin = token("boss", "admin")
    foreign = encode_cursor("stats.operators", ["op-1"])
    bad_time = encode_cursor("assigner.stuck-chats", ["yesterday", "c"])
    naive_time = encode_cursor("assigner.stuck-chats", ["2026-01-01T00:00:00", "c"])
    app = fakes.build("assigner")  # an Untouched store: a refused page never reaches it
    async with fakes.serving(app, "assigner") as api:
        for cursor in ("nope", "!!!", "e30", foreign, bad_time, naive_time, "x" * 3000):
            r = await api.get("/v1/admin/stuck-chats", params={"cursor": cursor}, headers=admin)
            assert r.status_code == 422, (cursor, r.text)
            assert set(r.json()["error"]) >= {"code", "message"}
        for limit in ("0", "1001", "-1", "ten", ""):
            r = await api.get("/v1/admin/stuck-chats", params={"limit": limit}, headers=admin)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (limit, r.text)
        # The token is checked before the query string.
        assert (await api.get("/v1/admin/stuck-chats", params={"cursor": "nope"})).status_code == 401
    assert app.state.assigner.reached == []
