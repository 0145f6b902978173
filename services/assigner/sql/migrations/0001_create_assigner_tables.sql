-- Chats, their messages, assignment records, applied event ids and the lifecycle outbox.

CREATE TABLE assigner.chats (
    chat_id              text PRIMARY KEY,
    state                text NOT NULL CHECK (state IN
                             ('waiting_assignment', 'assigned', 'waiting_real_user_reply', 'completed')),
    assigned_operator_id text,
    last_operator_id     text,
    assignment_id        uuid,
    waiting_since        timestamptz,
    queued_at            timestamptz,
    operator_replied_at  timestamptz,
    last_user_message_at timestamptz,
    message_count        integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    -- Invariant 1: assigned <=> an operator <=> a current assignment.
    CONSTRAINT chats_assigned_has_operator CHECK ((state = 'assigned') = (assigned_operator_id IS NOT NULL)),
    CONSTRAINT chats_assigned_has_assignment CHECK ((state = 'assigned') = (assignment_id IS NOT NULL)),
    CONSTRAINT chats_waiting_has_position CHECK (state <> 'waiting_assignment'
                                                 OR (waiting_since IS NOT NULL AND queued_at IS NOT NULL))
);

-- The hot set: only waiting chats, in queue order, so a pull is an index probe.
CREATE INDEX chats_queue_idx ON assigner.chats (waiting_since, chat_id) WHERE state = 'waiting_assignment';
CREATE INDEX chats_state_idx ON assigner.chats (state);

CREATE TABLE assigner.messages (
    chat_id       text NOT NULL,
    message_id    text NOT NULL,
    seq           integer NOT NULL,
    sender        text NOT NULL CHECK (sender IN ('user', 'operator')),
    operator_id   text,
    text          text NOT NULL,
    sent_at       timestamptz,
    recorded_at   timestamptz NOT NULL,
    -- The assignment active for the chat when the message arrived, and who held it.
    assignment_id uuid,
    handled_by    text,
    event_id      uuid NOT NULL,
    PRIMARY KEY (chat_id, message_id),
    CONSTRAINT messages_operator_has_author CHECK ((sender = 'operator') = (operator_id IS NOT NULL))
);
CREATE UNIQUE INDEX messages_chat_seq_idx ON assigner.messages (chat_id, seq);
CREATE INDEX messages_operator_idx ON assigner.messages (operator_id) WHERE operator_id IS NOT NULL;

CREATE TABLE assigner.assignments (
    assignment_id     uuid PRIMARY KEY,
    chat_id           text NOT NULL REFERENCES assigner.chats (chat_id),
    operator_id       text NOT NULL,
    via               text NOT NULL CHECK (via IN ('pull', 'reassign')),
    started_at        timestamptz NOT NULL,
    first_response_at timestamptz,
    ended_at          timestamptz,
    outcome           text CHECK (outcome IN ('answered', 'released', 'timed_out', 'reassigned', 'completed')),
    CONSTRAINT assignments_ended_has_outcome CHECK ((ended_at IS NULL) = (outcome IS NULL))
);
-- Invariant 1 again, enforced by the database: one active assignment per chat.
CREATE UNIQUE INDEX assignments_one_active_per_chat ON assigner.assignments (chat_id) WHERE ended_at IS NULL;
CREATE INDEX assignments_active_by_operator ON assigner.assignments (operator_id, started_at) WHERE ended_at IS NULL;
CREATE INDEX assignments_by_chat ON assigner.assignments (chat_id, started_at);

CREATE TABLE assigner.processed_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Lifecycle facts written in the same transaction as the state change; the relay publishes
-- them in id order (per chat, id order is commit order: the chat row lock serialises writers)
-- and deletes them only after Kafka acknowledged.
CREATE TABLE assigner.outbox (
    id         bigserial PRIMARY KEY,
    chat_id    text NOT NULL,
    event_id   uuid NOT NULL,
    type       text NOT NULL,
    envelope   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE assigner.chats SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE assigner.outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
