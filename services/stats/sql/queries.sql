-- Stats queries. Table names are unqualified on purpose: the pool's search_path picks the
-- schema (`stats` for the live service, a shadow schema for `switchboard stats rebuild`), so
-- the replay runs exactly the statements the live consumer runs. The applied event ids are
-- claimed and pruned through shared/tracking.py, which names the schema (`stats` or the shadow).

-- name: record_chats_handled
-- Remember which chats each operator wrote to (per day and overall); counts the first-time pairs (day NULL = overall).
WITH touched AS (
    SELECT DISTINCT operator_id, chat_id, day
    FROM unnest($1::text[], $2::text[], $3::date[]) AS t (operator_id, chat_id, day)
), new_day_pairs AS (
    INSERT INTO operator_chat_days (operator_id, day, chat_id)
    SELECT operator_id, day, chat_id FROM touched ORDER BY operator_id, day, chat_id
    ON CONFLICT DO NOTHING
    RETURNING operator_id, day
), new_pairs AS (
    INSERT INTO operator_chats (operator_id, chat_id)
    SELECT DISTINCT operator_id, chat_id FROM touched ORDER BY operator_id, chat_id
    ON CONFLICT DO NOTHING
    RETURNING operator_id
)
SELECT operator_id, day, count(*)::bigint AS n FROM new_day_pairs GROUP BY operator_id, day
UNION ALL
SELECT operator_id, NULL::date, count(*)::bigint FROM new_pairs GROUP BY operator_id;

-- name: add_operator_days
-- Add a batch's increments to the per-operator, per-day counters (one row per key, keys sorted).
INSERT INTO operator_daily AS d (operator_id, day, assignments, messages_sent, chats_handled, answered,
                                 released, timed_out, reassigned_away, first_response_count,
                                 first_response_ms_sum)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
ON CONFLICT (operator_id, day) DO UPDATE SET
    assignments           = d.assignments + excluded.assignments,
    messages_sent         = d.messages_sent + excluded.messages_sent,
    chats_handled         = d.chats_handled + excluded.chats_handled,
    answered              = d.answered + excluded.answered,
    released              = d.released + excluded.released,
    timed_out             = d.timed_out + excluded.timed_out,
    reassigned_away       = d.reassigned_away + excluded.reassigned_away,
    first_response_count  = d.first_response_count + excluded.first_response_count,
    first_response_ms_sum = d.first_response_ms_sum + excluded.first_response_ms_sum;

-- name: add_operator_totals
-- Add a batch's increments to the all-time per-operator counters (one row per operator, sorted).
INSERT INTO operator_totals AS t (operator_id, assignments, messages_sent, chats_handled, answered,
                                  released, timed_out, reassigned_away, first_response_count,
                                  first_response_ms_sum)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
ON CONFLICT (operator_id) DO UPDATE SET
    assignments           = t.assignments + excluded.assignments,
    messages_sent         = t.messages_sent + excluded.messages_sent,
    chats_handled         = t.chats_handled + excluded.chats_handled,
    answered              = t.answered + excluded.answered,
    released              = t.released + excluded.released,
    timed_out             = t.timed_out + excluded.timed_out,
    reassigned_away       = t.reassigned_away + excluded.reassigned_away,
    first_response_count  = t.first_response_count + excluded.first_response_count,
    first_response_ms_sum = t.first_response_ms_sum + excluded.first_response_ms_sum;

-- name: add_chats
-- Add a batch's increments to the per-chat counters (one row per chat, sorted).
INSERT INTO chat_totals AS c (chat_id, user_messages, operator_messages, assignments)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
ON CONFLICT (chat_id) DO UPDATE SET
    user_messages     = c.user_messages + excluded.user_messages,
    operator_messages = c.operator_messages + excluded.operator_messages,
    assignments       = c.assignments + excluded.assignments;

-- name: operator_day
-- One operator's figures on one UTC day (no row: all zeros).
SELECT operator_id, assignments, messages_sent, chats_handled, answered, released, timed_out,
       reassigned_away, first_response_count, first_response_ms_sum
FROM operator_daily WHERE operator_id = $1 AND day = $2;

-- name: operator_total
-- One operator's all-time figures (no row: all zeros).
SELECT operator_id, assignments, messages_sent, chats_handled, answered, released, timed_out,
       reassigned_away, first_response_count, first_response_ms_sum
FROM operator_totals WHERE operator_id = $1;

-- name: operators_all_time
-- Every operator's all-time figures.
SELECT operator_id, assignments, messages_sent, chats_handled, answered, released, timed_out,
       reassigned_away, first_response_count, first_response_ms_sum
FROM operator_totals ORDER BY operator_id;

-- name: chat
-- One chat's figures (no row: all zeros).
SELECT chat_id, user_messages, operator_messages, assignments FROM chat_totals WHERE chat_id = $1;

-- name: all_operator_days
-- Every per-operator, per-day row (for reconcile and rebuild comparisons).
SELECT operator_id, day, assignments, messages_sent, chats_handled, answered, released, timed_out,
       reassigned_away, first_response_count, first_response_ms_sum
FROM operator_daily;

-- name: all_chats
-- Every per-chat row (for reconcile and rebuild comparisons).
SELECT chat_id, user_messages, operator_messages, assignments FROM chat_totals;

-- name: create_shadow_schema
-- Replace a shadow schema with empty copies of the stats tables (for rebuild).
SELECT stats.create_shadow_schema($1);

-- name: drop_shadow_schema
-- Drop a shadow schema made by create_shadow_schema, if it exists.
SELECT stats.drop_shadow_schema($1);

-- ---- retention and pagination (docs/operations.md "Data retention", docs/contract.md "Lists") ----

-- name: operators_page_on_day
-- One page of operators (ids after $2, or from the first when NULL; at most $3) with their figures on UTC day $1.
SELECT t.operator_id,
       coalesce(d.assignments, 0) AS assignments, coalesce(d.messages_sent, 0) AS messages_sent,
       coalesce(d.chats_handled, 0) AS chats_handled, coalesce(d.answered, 0) AS answered,
       coalesce(d.released, 0) AS released, coalesce(d.timed_out, 0) AS timed_out,
       coalesce(d.reassigned_away, 0) AS reassigned_away,
       coalesce(d.first_response_count, 0) AS first_response_count,
       coalesce(d.first_response_ms_sum, 0) AS first_response_ms_sum
FROM operator_totals t
LEFT JOIN operator_daily d ON d.operator_id = t.operator_id AND d.day = $1
WHERE $2::text IS NULL OR t.operator_id > $2::text
ORDER BY t.operator_id
LIMIT $3;

-- name: operators_page_all_time
-- One page of operators' all-time figures (ids after $1, or from the first when NULL; at most $2).
SELECT operator_id, assignments, messages_sent, chats_handled, answered, released, timed_out,
       reassigned_away, first_response_count, first_response_ms_sum
FROM operator_totals
WHERE $1::text IS NULL OR operator_id > $1::text
ORDER BY operator_id
LIMIT $2;

-- ---- per queue and UTC day (docs/stats.md, "Per queue") ----

-- name: add_queue_days
-- Add a batch's increments to the per-queue, per-day counters (one row per key, keys sorted).
INSERT INTO queue_daily AS q (queue_id, day, queued, assigned, answered, completed, first_wait_count,
                              first_wait_ms_sum, sla_met, first_wait_le_5s, first_wait_le_15s,
                              first_wait_le_30s, first_wait_le_60s, first_wait_le_120s, first_wait_le_300s,
                              first_wait_le_600s, first_wait_over_600s)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                     $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[])
ON CONFLICT (queue_id, day) DO UPDATE SET
    queued               = q.queued + excluded.queued,
    assigned             = q.assigned + excluded.assigned,
    answered             = q.answered + excluded.answered,
    completed            = q.completed + excluded.completed,
    first_wait_count     = q.first_wait_count + excluded.first_wait_count,
    first_wait_ms_sum    = q.first_wait_ms_sum + excluded.first_wait_ms_sum,
    sla_met              = q.sla_met + excluded.sla_met,
    first_wait_le_5s     = q.first_wait_le_5s + excluded.first_wait_le_5s,
    first_wait_le_15s    = q.first_wait_le_15s + excluded.first_wait_le_15s,
    first_wait_le_30s    = q.first_wait_le_30s + excluded.first_wait_le_30s,
    first_wait_le_60s    = q.first_wait_le_60s + excluded.first_wait_le_60s,
    first_wait_le_120s   = q.first_wait_le_120s + excluded.first_wait_le_120s,
    first_wait_le_300s   = q.first_wait_le_300s + excluded.first_wait_le_300s,
    first_wait_le_600s   = q.first_wait_le_600s + excluded.first_wait_le_600s,
    first_wait_over_600s = q.first_wait_over_600s + excluded.first_wait_over_600s;

-- name: queue_day
-- One queue's figures on one UTC day (no row: all zeros).
SELECT queue_id, day, queued, assigned, answered, completed, first_wait_count, first_wait_ms_sum, sla_met,
       first_wait_le_5s, first_wait_le_15s, first_wait_le_30s, first_wait_le_60s, first_wait_le_120s,
       first_wait_le_300s, first_wait_le_600s, first_wait_over_600s
FROM queue_daily WHERE queue_id = $1 AND day = $2;

-- name: queues_page_on_day
-- One page of the queues with figures on UTC day $1 (ids after $2, or from the first when NULL; at most $3).
SELECT queue_id, day, queued, assigned, answered, completed, first_wait_count, first_wait_ms_sum, sla_met,
       first_wait_le_5s, first_wait_le_15s, first_wait_le_30s, first_wait_le_60s, first_wait_le_120s,
       first_wait_le_300s, first_wait_le_600s, first_wait_over_600s
FROM queue_daily
WHERE day = $1 AND ($2::text IS NULL OR queue_id > $2::text)
ORDER BY queue_id
LIMIT $3;

-- name: queue_sla_on_day
-- Every queue's first assignments and SLA-met count on UTC day $1 (the per-queue gauges).
SELECT queue_id, first_wait_count, sla_met FROM queue_daily WHERE day = $1 ORDER BY queue_id;

-- name: all_queue_days
-- Every per-queue, per-day row (for reconcile and rebuild comparisons).
SELECT queue_id, day, queued, assigned, answered, completed, first_wait_count, first_wait_ms_sum, sla_met,
       first_wait_le_5s, first_wait_le_15s, first_wait_le_30s, first_wait_le_60s, first_wait_le_120s,
       first_wait_le_300s, first_wait_le_600s, first_wait_over_600s
FROM queue_daily;
