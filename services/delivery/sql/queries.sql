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
-- Take `n` more sequence numbers for each stream (streams sorted: a stable lock order); returns each one's last after the take.
INSERT INTO delivery.stream_sequences AS s (stream, last_seq)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq
RETURNING stream, last_seq;

-- name: insert_stream_events
-- Append stream events (their sequences already reserved).
INSERT INTO delivery.stream_events (stream, seq, event_id, type, occurred_at, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::jsonb[]);

-- name: notify_streams
-- Wake every instance's readers of these streams; Postgres delivers a NOTIFY only when the transaction commits.
SELECT count(pg_notify('delivery_stream', stream)) FROM unnest($1::text[]) AS t (stream);

-- name: events_after
-- A stream's events after a sequence, oldest first, at most $3.
SELECT seq, type, occurred_at, data::text AS data
FROM delivery.stream_events
WHERE stream = $1 AND seq > $2
ORDER BY seq
LIMIT $3;

-- name: held_chats
-- Who holds these chats now.
SELECT chat_id, operator_id, assignment_id FROM delivery.held_chats WHERE chat_id = ANY($1::text[]);

-- name: hold_chats
-- Record the current holder of chats (one row per chat).
INSERT INTO delivery.held_chats AS h (chat_id, operator_id, assignment_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])
ON CONFLICT (chat_id) DO UPDATE SET operator_id = excluded.operator_id, assignment_id = excluded.assignment_id;

-- name: release_chats
-- Forget the holders of chats nobody holds any more.
DELETE FROM delivery.held_chats WHERE chat_id = ANY($1::text[]);

-- name: prune_stream_events
-- Delete up to $2 stream events recorded before $1; returns how many went.
WITH old AS MATERIALIZED (
    SELECT stream, seq FROM delivery.stream_events WHERE recorded_at < $1 LIMIT $2
), gone AS (
    DELETE FROM delivery.stream_events e USING old
    WHERE e.stream = old.stream AND e.seq = old.seq
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
