-- Idempotency keys of ingest: one row per (chat_id, message_id), the only state ingest owns.
--
-- A row is written before the event is produced and is the arbiter between retries, restarts
-- and several ingest instances: the first insert fixes the key's event_id and the exact record
-- value; every later request for the key publishes (if still unacknowledged) that same record.
-- `envelope` is kept only until Kafka acknowledged it, so the table stays small.

CREATE TABLE ingest.message_keys (
    chat_id    text NOT NULL,
    message_id text NOT NULL,
    event_id   uuid NOT NULL,
    envelope   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    acked_at   timestamptz,
    PRIMARY KEY (chat_id, message_id),
    CONSTRAINT message_keys_unacked_keeps_envelope CHECK (acked_at IS NOT NULL OR envelope IS NOT NULL)
);

-- Every row is updated once (acked); room on the page keeps that a HOT update.
ALTER TABLE ingest.message_keys SET (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.05);
