-- Event-id tracking (shared/tracking.py): every consumer's processed_events table.
-- `__schema__` stands for the consuming service's schema. Table names cannot be $-parameters,
-- so shared/tracking.py substitutes it once at import, from its fixed set of known schema names
-- (never from input); each service then runs one fixed text.

-- name: claim_event_ids
-- Record applied event ids in the applying transaction; returns the ids that were new.
WITH ins AS (
    INSERT INTO __schema__.processed_events (event_id)
    SELECT unnest($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
SELECT coalesce(array_agg(event_id), '{}'::uuid[]) FROM ins;

-- name: prune_processed_events
-- Forget up to $2 applied event ids recorded before $1 (past the dedup window); returns (removed, claimed).
WITH doomed AS MATERIALIZED (
    SELECT event_id FROM __schema__.processed_events
    WHERE applied_at < $1
    ORDER BY applied_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM __schema__.processed_events p USING doomed d WHERE p.event_id = d.event_id RETURNING 1
)
SELECT count(*) AS removed, count(*) AS claimed FROM gone;
