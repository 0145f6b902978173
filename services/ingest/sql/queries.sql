-- Named queries of ingest. Python refers to them by name (shared.db.Queries).

-- name: claim_keys
-- Insert the keys not seen before, each with its fresh event id and record; returns the keys inserted.
INSERT INTO ingest.message_keys (chat_id, message_id, event_id, envelope)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[])
ON CONFLICT (chat_id, message_id) DO NOTHING
RETURNING chat_id, message_id;

-- name: read_keys
-- The stored event id, unacknowledged record and ack state of existing keys.
SELECT k.chat_id, k.message_id, k.event_id, k.envelope, k.acked_at IS NOT NULL AS acked
FROM unnest($1::text[], $2::text[]) AS w(chat_id, message_id)
JOIN ingest.message_keys k ON k.chat_id = w.chat_id AND k.message_id = w.message_id;

-- name: mark_acked
-- Record Kafka's acknowledgement (and drop the record); returns the keys this call was first to mark.
WITH target AS (
    SELECT k.chat_id, k.message_id
    FROM ingest.message_keys k
    JOIN unnest($1::text[], $2::text[]) AS a(chat_id, message_id)
      ON k.chat_id = a.chat_id AND k.message_id = a.message_id
    WHERE k.acked_at IS NULL
    ORDER BY k.chat_id, k.message_id  -- one lock order for every caller: no deadlocks
    FOR UPDATE OF k
)
UPDATE ingest.message_keys k
SET acked_at = now(), envelope = NULL
FROM target t
WHERE k.chat_id = t.chat_id AND k.message_id = t.message_id AND k.acked_at IS NULL
RETURNING k.chat_id, k.message_id;

-- name: prune_acked_keys
-- Forget up to $2 keys acknowledged before $1 (past the dedup window; never an unacked one); returns (removed, claimed).
WITH doomed AS MATERIALIZED (
    SELECT chat_id, message_id FROM ingest.message_keys
    WHERE acked_at IS NOT NULL AND acked_at < $1
    ORDER BY acked_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM ingest.message_keys k USING doomed d
    WHERE k.chat_id = d.chat_id AND k.message_id = d.message_id
    RETURNING 1
)
SELECT count(*) AS removed, count(*) AS claimed FROM gone;
