-- The chat streams' replay window: each chat's stream events with a per-chat sequence (the SSE
-- `id`), the last sequence handed out per chat, and the applied event ids.

CREATE TABLE delivery.processed_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_applied_at_idx ON delivery.processed_events (applied_at);

-- One row per chat: the last sequence number given to one of its stream events. Kept after the
-- events are pruned, so a sequence is never reused (a client's Last-Event-ID stays meaningful).
CREATE TABLE delivery.chat_sequences (
    chat_id  text PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE delivery.stream_events (
    chat_id     text NOT NULL,
    seq         bigint NOT NULL,
    event_id    uuid NOT NULL,
    type        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    data        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, seq)
);
CREATE INDEX stream_events_recorded_at_idx ON delivery.stream_events (recorded_at);
