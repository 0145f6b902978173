"""Event-id tracking has one SQL text, instantiated only for the known schemas."""

from datetime import timedelta

import pytest

from shared.tracking import SCHEMAS, EventIds


def test_each_known_schema_claims_and_prunes_only_its_own_processed_events():
    for schema in SCHEMAS:
        ids = EventIds(schema)
        for sql in (ids.claim_sql, ids.prune_sql):
            assert f"{schema}.processed_events" in sql and "__schema__" not in sql
            others = [s for s in SCHEMAS if s != schema and not s.startswith(schema)]
            assert not any(f"{o}.processed_events" in sql for o in others)
        assert ids.prune_job(timedelta(days=1)).table == f"{schema}.processed_events"


def test_a_schema_outside_the_known_set_is_refused_before_any_sql_is_built():
    for name in ("stats; DROP TABLE x", "public", "ingest", ""):
        with pytest.raises(ValueError, match="no processed_events table"):
            EventIds(name)


def test_the_services_sql_files_hold_no_copy_of_the_claim_or_prune_statement():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in (root / "services").glob("*/sql/queries.sql"):
        text = path.read_text()
        assert "name: claim_event_ids" not in text and "name: prune_processed_events" not in text, path
