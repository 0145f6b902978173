-- Armed idle deadlines, tombstones of ended assignments, and applied event ids.

-- One row per assignment whose operator has not yet been timed out, answered or relieved.
-- The row is deleted when the assignment ends or, after Kafka acknowledged its
-- `assignment_idle` event, when it fired.
CREATE TABLE idle_monitor.deadlines (
    assignment_id uuid PRIMARY KEY,
    chat_id       text NOT NULL,
    operator_id   text NOT NULL,
    assigned_at   timestamptz NOT NULL,
    deadline      timestamptz NOT NULL,
    armed_at      timestamptz NOT NULL DEFAULT now()
);
-- The ticker's claim is an index range scan over the due rows, oldest deadline first.
CREATE INDEX deadlines_due_idx ON idle_monitor.deadlines (deadline);

-- Assignments known to have ended, so a `chat_assigned` that arrives after (or without)
-- its start never arms a timer for a dead assignment.
CREATE TABLE idle_monitor.ended_assignments (
    assignment_id uuid PRIMARY KEY,
    ended_at      timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ended_assignments_recorded_idx ON idle_monitor.ended_assignments (recorded_at);

CREATE TABLE idle_monitor.processed_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_applied_idx ON idle_monitor.processed_events (applied_at);

-- Small, hot, insert-and-delete tables: vacuum them early.
ALTER TABLE idle_monitor.deadlines SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 500);
