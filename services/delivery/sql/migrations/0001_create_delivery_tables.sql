-- The streams' replay window. A stream is a chat's (key `chat:<chat_id>`) or an operator's
-- (`operator:<operator_id>`); each holds its events with a per-stream sequence (the SSE `id`).

CREATE TABLE delivery.processed_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_applied_at_idx ON delivery.processed_events (applied_at);

-- One row per stream: the last sequence number given to one of its events. Kept after the
-- events are pruned, so a sequence is never reused (a client's Last-Event-ID stays meaningful).
CREATE TABLE delivery.stream_sequences (
    stream   text PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE delivery.stream_events (
    stream      text NOT NULL,
    seq         bigint NOT NULL,
    event_id    uuid NOT NULL,
    type        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    data        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);
CREATE INDEX stream_events_recorded_at_idx ON delivery.stream_events (recorded_at);

-- Who holds each chat now (from chat_assigned / assignment_ended), so a chat's messages also go
-- to its operator's stream.
CREATE TABLE delivery.held_chats (
    chat_id       text PRIMARY KEY,
    operator_id   text NOT NULL,
    assignment_id uuid NOT NULL
);
