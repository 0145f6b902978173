"""Opaque list cursors: a cursor round-trips to its key; anything else is a 422 `invalid_cursor`."""

import pytest

from shared.errors import ApiError
from shared.pagination import decode_cursor, encode_cursor


def test_a_cursor_gives_back_the_key_it_was_made_from_and_the_first_page_has_none():
    key = ["2026-01-01T00:00:00.000001+00:00", "chat/with spaces|ü"]
    assert decode_cursor("list-a", encode_cursor("list-a", key), 2) == key
    assert decode_cursor("list-a", None, 2) is None


@pytest.mark.parametrize("cursor", [
    "", "nope", "%%%", "ü", "e30", encode_cursor("list-b", ["x", "y"]), encode_cursor("list-a", ["x"]),
    encode_cursor("list-a", ["x", 1]), encode_cursor("list-a", ["x", "nul\x00"]), "bnVsbA",  # JSON null
])
def test_a_cursor_this_list_did_not_issue_is_a_422(cursor):
    with pytest.raises(ApiError) as caught:
        decode_cursor("list-a", cursor, 2)
    assert caught.value.status == 422 and caught.value.code == "invalid_cursor"
