-- Named queries of delivery (see shared/db.py: `-- name:` then a description line).

-- name: claim_event_ids
-- Record a batch of event ids as applied; returns the ids not seen before.
WITH ins AS (
    INSERT INTO delivery.processed_events (event_id)
    SELECT unnest($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
SELECT coalesce(array_agg(event_id), '{}'::uuid[]) FROM ins;

-- name: reserve_sequences
-- Take `n` more sequence numbers for each chat (chats sorted); returns each chat's last one after the take.
INSERT INTO delivery.chat_sequences AS s (chat_id, last_seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (chat_id) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq
RETURNING chat_id, last_seq;

-- name: insert_stream_events
-- Append stream events (their sequences already reserved).
INSERT INTO delivery.stream_events (chat_id, seq, event_id, type, occurred_at, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::jsonb[]);

-- name: notify_chats
-- Wake every instance's streams of these chats; Postgres delivers a NOTIFY only when the transaction commits.
SELECT count(pg_notify('delivery_stream', chat_id)) FROM unnest($1::text[]) AS t (chat_id);

-- name: events_after
-- A chat's stream events after a sequence, oldest first, at most $3.
SELECT seq, type, occurred_at, data::text AS data
FROM delivery.stream_events
WHERE chat_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3;

-- name: prune_stream_events
-- Delete up to $2 stream events recorded before $1; returns how many went.
WITH old AS MATERIALIZED (
    SELECT chat_id, seq FROM delivery.stream_events WHERE recorded_at < $1 LIMIT $2
), gone AS (
    DELETE FROM delivery.stream_events e USING old
    WHERE e.chat_id = old.chat_id AND e.seq = old.seq
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: prune_processed_events
-- Forget up to $2 applied event ids recorded before $1 (older events are ignored on redelivery); returns how many went.
WITH old AS MATERIALIZED (
    SELECT event_id FROM delivery.processed_events WHERE applied_at < $1 LIMIT $2
), gone AS (
    DELETE FROM delivery.processed_events p USING old WHERE p.event_id = old.event_id
    RETURNING 1
)
SELECT count(*) FROM gone;
