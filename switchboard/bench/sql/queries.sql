-- What the benchmark reads and writes in the bench's own database: the checks after each phase
-- (read-only) and the scale check's bulk load of waiting chats.
-- A run's messages are those whose message_id starts with `b<run id>-` ($1 is that LIKE pattern).

-- name: count_run_messages
-- How many of this run's messages the assigner has stored.
SELECT count(*) FROM assigner.messages WHERE message_id LIKE $1;

-- name: run_messages
-- This run's stored messages: who sent each and when the assigner recorded it (epoch seconds).
SELECT message_id, sender, extract(epoch FROM recorded_at)::float8 AS t
FROM assigner.messages
WHERE message_id LIKE $1;

-- name: answered_per_second
-- Assignments ended by the operator's answer, per wall-clock second of their end.
SELECT floor(extract(epoch FROM ended_at))::bigint AS s, count(*) AS n
FROM assigner.assignments
WHERE outcome = 'answered'
GROUP BY 1;

-- name: chats_with_message_count_mismatch
-- Chats whose message_count differs from the messages stored for them.
SELECT count(*)
FROM assigner.chats c
LEFT JOIN (SELECT chat_id, count(*) AS n FROM assigner.messages GROUP BY 1) m USING (chat_id)
WHERE c.message_count <> coalesce(m.n, 0);

-- name: chats_with_two_active_assignments
-- Chats that have more than one assignment not ended.
SELECT count(*)
FROM (SELECT chat_id FROM assigner.assignments WHERE ended_at IS NULL GROUP BY 1 HAVING count(*) > 1) x;

-- name: stats_applied_at
-- When stats applied each of these lifecycle facts (epoch seconds); facts it has not applied are absent.
SELECT event_id, extract(epoch FROM applied_at)::float8 AS t
FROM stats.processed_events
WHERE event_id = ANY($1::uuid[]);

-- name: insert_waiting_chats
-- Waiting chats scale-<n> for n in [$1, $2], waiting_since spread over the last day.
INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, rank, message_count, created_at, updated_at)
SELECT 'scale-' || lpad(g::text, 8, '0'), 'waiting_assignment', ts, ts, ts, 0, now(), now()
FROM (SELECT g, now() - random() * interval '1 day' AS ts FROM generate_series($1::int, $2::int) g) s;

-- name: insert_routed_waiting_chats
-- The routed scale check's waiting chats scale-<n> for n in [$1, $2]: queue $3[n % 20], skill set
-- $4[(n / 20) % 8] (comma-joined), priority n % 10, rank = waiting_since - priority * $5 seconds.
INSERT INTO assigner.chats (chat_id, state, waiting_since, queued_at, rank, queue_id, priority, skills,
                            message_count, created_at, updated_at)
SELECT 'scale-' || lpad(g::text, 8, '0'), 'waiting_assignment', ts, ts, ts - make_interval(secs => (g % 10) * $5),
       ($3::text[])[1 + g % cardinality($3::text[])],
       g % 10,
       string_to_array(($4::text[])[1 + (g / cardinality($3::text[])) % cardinality($4::text[])], ','),
       0, now(), now()
FROM (SELECT g, now() - random() * interval '1 day' AS ts FROM generate_series($1::int, $2::int) g) s;

-- name: insert_routed_queue
-- One of the routed scale check's queues ($1 id, $2 name, $3 priority_step_s); skills never relax.
INSERT INTO assigner.queues (queue_id, name, priority_step_s) VALUES ($1, $2, $3)
ON CONFLICT (queue_id) DO UPDATE SET name = EXCLUDED.name, priority_step_s = EXCLUDED.priority_step_s;

-- name: insert_routed_operator
-- One routed scale-check puller's profile ($1 id, $2 queues, $3 skills, $4 capacity), available.
INSERT INTO assigner.operators (operator_id, display_name, queues, skills, capacity) VALUES ($1, $1, $2, $3, $4)
ON CONFLICT (operator_id) DO UPDATE SET queues = EXCLUDED.queues, skills = EXCLUDED.skills,
                                        capacity = EXCLUDED.capacity, status = 'available';

-- name: vacuum_chats
-- Fresh planner statistics and visibility map after a bulk load.
VACUUM (ANALYZE) assigner.chats;

-- name: count_waiting_chats
-- Chats waiting for an operator.
SELECT count(*) FROM assigner.chats WHERE state = 'waiting_assignment';
