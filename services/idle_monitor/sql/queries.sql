-- Named queries of the idle monitor (see shared/db.py: `-- name:` then a description line).

-- name: disarm_deadlines
-- Remember ended assignments and delete their deadlines; returns how many deadlines went.
WITH ended AS (
    INSERT INTO idle_monitor.ended_assignments (assignment_id, ended_at)
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
    ON CONFLICT (assignment_id) DO NOTHING
), gone AS (
    DELETE FROM idle_monitor.deadlines
    WHERE assignment_id = ANY($1::uuid[])
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: arm_deadlines
-- Arm a deadline per started assignment unless it already ended or is armed; returns how many were armed.
WITH started AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
        AS s (assignment_id, chat_id, operator_id, assigned_at, deadline)
), armed AS (
    INSERT INTO idle_monitor.deadlines (assignment_id, chat_id, operator_id, assigned_at, deadline)
    SELECT s.assignment_id, s.chat_id, s.operator_id, s.assigned_at, s.deadline
    FROM started s
    WHERE NOT EXISTS (
        SELECT 1 FROM idle_monitor.ended_assignments e WHERE e.assignment_id = s.assignment_id
    )
    ON CONFLICT (assignment_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM armed;

-- name: claim_due_deadlines
-- Lock up to $2 deadlines due at $1, oldest first, skipping rows another instance holds.
SELECT assignment_id, chat_id, operator_id, assigned_at, deadline
FROM idle_monitor.deadlines
WHERE deadline <= $1
ORDER BY deadline
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: delete_fired_deadlines
-- Delete deadlines whose `assignment_idle` event Kafka acknowledged.
DELETE FROM idle_monitor.deadlines WHERE assignment_id = ANY($1::uuid[]);

-- name: count_armed_deadlines
-- How many deadlines are armed right now.
SELECT count(*) FROM idle_monitor.deadlines;

-- name: list_armed_deadlines
-- Armed deadlines, soonest first, at most $1 of them.
SELECT assignment_id, chat_id, operator_id, assigned_at, deadline, armed_at
FROM idle_monitor.deadlines
ORDER BY deadline, assignment_id
LIMIT $1;

-- name: prune_ended_assignments
-- Forget up to $2 ended-assignment tombstones recorded before $1 (past the dedup window); returns (removed, claimed).
-- (The batch shape of shared/sql/tracking.sql's prune, on purpose: every retention job is one such
-- statement over its own table and key, and shared.retention runs them alike.)
WITH doomed AS MATERIALIZED (
    SELECT assignment_id FROM idle_monitor.ended_assignments
    WHERE recorded_at < $1
    ORDER BY recorded_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM idle_monitor.ended_assignments e USING doomed d WHERE e.assignment_id = d.assignment_id RETURNING 1
)
SELECT count(*) AS removed, count(*) AS claimed FROM gone;
