"""The SQL peer's run is repeated when its own script collides on a random new chat id, and only then."""

import pytest

from switchboard.bench import pgbench
from switchboard.bench.options import Options


async def test_a_duplicate_key_abort_runs_the_peer_again_on_a_fresh_database(monkeypatch):
    calls = []

    async def run(base_url, name, opts, script, seconds, label, setup_sql=None):
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError('pgbench failed: ERROR:  duplicate key value violates unique constraint "chats_pkey"')
        return {"tps": 812.5}

    monkeypatch.setattr(pgbench, "_run", run)
    result = await pgbench.run_sql_peer("postgresql://x", "peer", Options())
    assert (result["turns_per_s"], result["attempts"], len(calls)) == (812.5, 2, 2)


async def test_other_failures_and_a_third_collision_are_reported_not_retried_forever(monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("pgbench failed: connection refused")

    monkeypatch.setattr(pgbench, "_run", broken)
    with pytest.raises(RuntimeError, match="connection refused"):
        await pgbench.run_sql_peer("postgresql://x", "peer", Options())

    calls = []

    async def always_collides(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("pgbench failed: duplicate key value")

    monkeypatch.setattr(pgbench, "_run", always_collides)
    with pytest.raises(RuntimeError, match="duplicate key"):
        await pgbench.run_sql_peer("postgresql://x", "peer", Options())
    assert len(calls) == pgbench.PEER_ATTEMPTS
