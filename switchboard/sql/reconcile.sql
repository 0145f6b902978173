-- Recounts of every stats figure from the assigner's authoritative records (read-only).
-- Days are UTC dates of the records' own timestamps, exactly as stats takes them from the facts.

-- name: recount_operator_days
-- Per operator and UTC day: every docs/contract.md §5 counter, recounted from assigner.assignments and assigner.messages.
WITH started AS (
    SELECT operator_id, (started_at AT TIME ZONE 'UTC')::date AS day, count(*) AS assignments
    FROM assigner.assignments GROUP BY 1, 2
), sent AS (
    SELECT operator_id, (recorded_at AT TIME ZONE 'UTC')::date AS day,
           count(*) AS messages_sent, count(DISTINCT chat_id) AS chats_handled
    FROM assigner.messages WHERE sender = 'operator' GROUP BY 1, 2
), ended AS (
    SELECT operator_id, (ended_at AT TIME ZONE 'UTC')::date AS day,
           count(*) FILTER (WHERE outcome = 'answered') AS answered,
           count(*) FILTER (WHERE outcome = 'released') AS released,
           count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
           count(*) FILTER (WHERE outcome = 'reassigned') AS reassigned_away
    FROM assigner.assignments WHERE ended_at IS NOT NULL GROUP BY 1, 2
), responded AS (
    SELECT operator_id, (first_response_at AT TIME ZONE 'UTC')::date AS day,
           count(*) AS first_response_count,
           sum(floor(extract(epoch FROM (first_response_at - started_at)) * 1000))::bigint AS first_response_ms_sum
    FROM assigner.assignments WHERE first_response_at IS NOT NULL GROUP BY 1, 2
), keys AS (
    SELECT operator_id, day FROM started
    UNION SELECT operator_id, day FROM sent
    UNION SELECT operator_id, day FROM ended
    UNION SELECT operator_id, day FROM responded
)
SELECT k.operator_id, k.day,
       coalesce(s.assignments, 0) AS assignments,
       coalesce(m.messages_sent, 0) AS messages_sent,
       coalesce(m.chats_handled, 0) AS chats_handled,
       coalesce(e.answered, 0) AS answered,
       coalesce(e.released, 0) AS released,
       coalesce(e.timed_out, 0) AS timed_out,
       coalesce(e.reassigned_away, 0) AS reassigned_away,
       coalesce(r.first_response_count, 0) AS first_response_count,
       coalesce(r.first_response_ms_sum, 0) AS first_response_ms_sum
FROM keys k
LEFT JOIN started s USING (operator_id, day)
LEFT JOIN sent m USING (operator_id, day)
LEFT JOIN ended e USING (operator_id, day)
LEFT JOIN responded r USING (operator_id, day);

-- name: recount_operator_totals
-- Per operator, all time: every docs/contract.md §5 counter; chats_handled counts distinct chats overall.
WITH assigned AS (
    SELECT operator_id, count(*) AS assignments,
           count(*) FILTER (WHERE outcome = 'answered') AS answered,
           count(*) FILTER (WHERE outcome = 'released') AS released,
           count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
           count(*) FILTER (WHERE outcome = 'reassigned') AS reassigned_away,
           count(first_response_at) AS first_response_count,
           coalesce(sum(floor(extract(epoch FROM (first_response_at - started_at)) * 1000)), 0)::bigint
               AS first_response_ms_sum
    FROM assigner.assignments GROUP BY 1
), sent AS (
    SELECT operator_id, count(*) AS messages_sent, count(DISTINCT chat_id) AS chats_handled
    FROM assigner.messages WHERE sender = 'operator' GROUP BY 1
)
SELECT operator_id,
       coalesce(a.assignments, 0) AS assignments,
       coalesce(m.messages_sent, 0) AS messages_sent,
       coalesce(m.chats_handled, 0) AS chats_handled,
       coalesce(a.answered, 0) AS answered,
       coalesce(a.released, 0) AS released,
       coalesce(a.timed_out, 0) AS timed_out,
       coalesce(a.reassigned_away, 0) AS reassigned_away,
       coalesce(a.first_response_count, 0) AS first_response_count,
       coalesce(a.first_response_ms_sum, 0) AS first_response_ms_sum
FROM assigned a FULL JOIN sent m USING (operator_id);

-- name: recount_chats
-- Per chat: user messages, operator messages and assignments.
WITH msgs AS (
    SELECT chat_id, count(*) FILTER (WHERE sender = 'user') AS user_messages,
           count(*) FILTER (WHERE sender = 'operator') AS operator_messages
    FROM assigner.messages GROUP BY 1
), asg AS (
    SELECT chat_id, count(*) AS assignments FROM assigner.assignments GROUP BY 1
)
SELECT chat_id, coalesce(m.user_messages, 0) AS user_messages,
       coalesce(m.operator_messages, 0) AS operator_messages, coalesce(a.assignments, 0) AS assignments
FROM msgs m FULL JOIN asg a USING (chat_id);

-- name: outbox_backlog
-- Lifecycle facts the assigner has not published yet (non-zero: not quiescent).
SELECT count(*) FROM assigner.outbox;

-- name: recount_queue_assigned
-- Per queue and UTC day: assignments started, by the queue each assignment records.
SELECT queue_id, (started_at AT TIME ZONE 'UTC')::date AS day, count(*) AS assigned
FROM assigner.assignments GROUP BY 1, 2;
