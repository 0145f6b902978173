"""The local broker's KRaft cluster id, computed in Python as `kafka-storage random-uuid` prints it."""

from __future__ import annotations

import base64
import uuid

from deploy.local.kafka import cluster_id


def test_a_cluster_id_is_a_random_uuid_in_url_safe_base64_without_padding():
    ids = {cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert len(value) == 22 and "=" not in value and not value.startswith("-")
        raw = base64.urlsafe_b64decode(value + "==")
        assert uuid.UUID(bytes=raw).version == 4
