-- Named queries of delivery (see shared/db.py: `-- name:` then a description line).

-- name: append_stream_events
-- Reserve each stream's block of sequences ($1 streams, sorted: a stable lock order; $2 counts), store the events
-- ($3.. in any order; $4 the event's place in its stream's block), and wake their readers with the NOTIFY payloads
-- $9 (Postgres delivers a NOTIFY only when the transaction commits). Returns how many events were stored.
WITH reserved AS (
    INSERT INTO delivery.stream_sequences AS s (stream, last_seq)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq
    RETURNING stream, last_seq
), stored AS (
    INSERT INTO delivery.stream_events (stream, seq, event_id, type, occurred_at, data)
    SELECT e.stream, r.last_seq - c.n + e.k, e.event_id, e.type, e.occurred_at, e.data
    FROM unnest($3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::timestamptz[], $8::jsonb[])
        AS e (stream, k, event_id, type, occurred_at, data)
    JOIN reserved r ON r.stream = e.stream
    JOIN unnest($1::text[], $2::bigint[]) AS c (stream, n) ON c.stream = e.stream
    RETURNING 1
)
SELECT (SELECT count(*) FROM stored) AS stored,
       (SELECT count(pg_notify('delivery_stream', p)) FROM unnest($9::text[]) AS p) AS notified;

-- name: events_after
-- A stream's events after a sequence, oldest first, at most $3.
SELECT seq, type, occurred_at, data::text AS data
FROM delivery.stream_events
WHERE stream = $1 AND seq > $2
ORDER BY seq
LIMIT $3;

-- name: events_after_many
-- Several streams' events, each after its own sequence ($1 streams, $2 sequences), oldest first per
-- stream, at most $3 per stream: one probe of the primary key per stream.
SELECT w.stream, e.seq, e.type, e.occurred_at, e.data::text AS data
FROM unnest($1::text[], $2::bigint[]) AS w (stream, after)
CROSS JOIN LATERAL (
    SELECT seq, type, occurred_at, data
    FROM delivery.stream_events
    WHERE stream = w.stream AND seq > w.after
    ORDER BY seq
    LIMIT $3
) AS e;

-- name: last_seq
-- The last sequence a stream has given out (no row: none yet).
SELECT last_seq FROM delivery.stream_sequences WHERE stream = $1;

-- name: batch_state
-- What a poll needs to know, in one read: who holds the chats $1 (`held`: value = operator, ref = assignment), which
-- queue the chats $2 wait in (`waiting`: value = queue), and the event types webhook endpoints want (`webhook`: value =
-- a type, `*` = every type; no such row: no endpoint, so the poll queues no webhook work).
SELECT 'held' AS kind, chat_id, operator_id AS value, assignment_id AS ref
FROM delivery.held_chats WHERE chat_id = ANY($1::text[])
UNION ALL
SELECT 'waiting', chat_id, queue_id, NULL FROM delivery.waiting_chats WHERE chat_id = ANY($2::text[])
UNION ALL
SELECT DISTINCT 'webhook', NULL::text, t.type, NULL::uuid
FROM delivery.webhook_endpoints e,
     unnest(CASE WHEN cardinality(e.event_types) = 0 THEN ARRAY['*'] ELSE e.event_types END) AS t (type);

-- name: save_chat_state
-- A poll's changes to the chats' holders ($1-$3 held now, $4 held by nobody) and waiting queues ($5-$6 waiting now,
-- $7 no longer waiting), and the queues' depth deltas ($8 queues, sorted: a stable lock order; $9 deltas). The new
-- depths wake every instance's operator streams: one NOTIFY `delivery_queue_depth` with [[queue, waiting, version], ...]
-- per 50 queues (delivered at commit). Keys never repeat within an array, so no row is touched twice.
WITH held AS (
    INSERT INTO delivery.held_chats AS h (chat_id, operator_id, assignment_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])
    ON CONFLICT (chat_id) DO UPDATE SET operator_id = excluded.operator_id, assignment_id = excluded.assignment_id
), freed AS (
    DELETE FROM delivery.held_chats WHERE chat_id = ANY($4::text[])
), waiting AS (
    INSERT INTO delivery.waiting_chats AS w (chat_id, queue_id)
    SELECT * FROM unnest($5::text[], $6::text[])
    ON CONFLICT (chat_id) DO UPDATE SET queue_id = excluded.queue_id
), gone AS (
    DELETE FROM delivery.waiting_chats WHERE chat_id = ANY($7::text[])
), depths AS (
    INSERT INTO delivery.queue_depths AS d (queue_id, waiting, version)
    SELECT q, n, 1 FROM unnest($8::text[], $9::integer[]) AS t (q, n)
    ON CONFLICT (queue_id) DO UPDATE SET waiting = d.waiting + excluded.waiting, version = d.version + 1
    RETURNING queue_id, waiting, version
)
SELECT count(pg_notify('delivery_queue_depth', payload)) AS notified
FROM (
    SELECT json_agg(json_build_array(queue_id, waiting, version) ORDER BY queue_id)::text AS payload
    FROM (SELECT *, (row_number() OVER (ORDER BY queue_id) - 1) / 50 AS chunk FROM depths) AS c
    GROUP BY chunk
) AS p;

-- name: queue_depths
-- Every queue's waiting count and version (the listener loads them when it (re)connects).
SELECT queue_id, waiting, version FROM delivery.queue_depths;

-- name: prune_stream_events
-- Delete up to $2 stream events recorded before $1; returns (removed, claimed) for shared.retention.
WITH old AS MATERIALIZED (
    SELECT stream, seq FROM delivery.stream_events WHERE recorded_at < $1 LIMIT $2
), gone AS (
    DELETE FROM delivery.stream_events e USING old
    WHERE e.stream = old.stream AND e.seq = old.seq
    RETURNING 1
)
SELECT count(*) AS removed, count(*) AS claimed FROM gone;

-- name: prune_webhook_deliveries
-- Delete up to $2 delivered webhook deliveries older than $1; returns (removed, claimed).
WITH old AS MATERIALIZED (
    SELECT id FROM delivery.webhook_deliveries WHERE status = 'delivered' AND delivered_at < $1 LIMIT $2
), gone AS (
    DELETE FROM delivery.webhook_deliveries d USING old WHERE d.id = old.id
    RETURNING 1
)
SELECT count(*) AS removed, count(*) AS claimed FROM gone;

-- name: enqueue_webhook_deliveries
-- Queue a batch's facts for every endpoint that wants their type, in batch order (the id is the sending order).
INSERT INTO delivery.webhook_deliveries (endpoint_id, chat_id, event_id, type, payload)
SELECT e.id, f.chat_id, f.event_id, f.type, f.payload
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS f (chat_id, event_id, type, payload, n)
JOIN delivery.webhook_endpoints e ON cardinality(e.event_types) = 0 OR f.type = ANY (e.event_types)
ORDER BY f.n, e.id
ON CONFLICT (endpoint_id, event_id) DO NOTHING;

-- name: claim_webhook_deliveries
-- Lease up to $1 due deliveries of enabled endpoints, each the oldest pending of its chat and endpoint, for $2 seconds.
WITH c AS MATERIALIZED (
    SELECT d.id
    FROM delivery.webhook_deliveries d
    JOIN delivery.webhook_endpoints e ON e.id = d.endpoint_id AND e.disabled_at IS NULL
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM delivery.webhook_deliveries o
                      WHERE o.endpoint_id = d.endpoint_id AND o.chat_id = d.chat_id
                        AND o.status = 'pending' AND o.id < d.id)
    ORDER BY d.next_attempt_at, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE delivery.webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => $2), attempts = d.attempts + 1
FROM c, delivery.webhook_endpoints e
WHERE d.id = c.id AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.chat_id, d.event_id, d.type, d.payload::text AS payload, d.attempts,
          d.created_at, e.url, e.secret;

-- name: mark_webhook_delivered
-- A delivery got a 2xx: done; its endpoint is healthy again.
WITH d AS (
    UPDATE delivery.webhook_deliveries
    SET status = 'delivered', delivered_at = now(), last_status = $2, last_error = NULL
    WHERE id = $1 AND status = 'pending'
    RETURNING endpoint_id
)
UPDATE delivery.webhook_endpoints e SET failing_since = NULL FROM d WHERE e.id = d.endpoint_id;

-- name: mark_webhook_failed
-- A delivery failed: retry after $2 seconds; its endpoint is disabled once it has failed for $5 seconds. Returns whether it was disabled now.
WITH d AS (
    UPDATE delivery.webhook_deliveries
    SET next_attempt_at = now() + make_interval(secs => $2), last_status = $3, last_error = $4
    WHERE id = $1 AND status = 'pending'
    RETURNING endpoint_id
)
UPDATE delivery.webhook_endpoints e
SET failing_since = coalesce(e.failing_since, now()),
    disabled_at = CASE WHEN e.disabled_at IS NULL AND e.failing_since < now() - make_interval(secs => $5)
                       THEN now() ELSE e.disabled_at END,
    disabled_reason = CASE WHEN e.disabled_at IS NULL AND e.failing_since < now() - make_interval(secs => $5)
                           THEN 'failing since ' || e.failing_since::text || ': ' || $4 ELSE e.disabled_reason END
FROM d WHERE e.id = d.endpoint_id
RETURNING e.disabled_at = now() AS disabled;

-- name: webhook_backlog
-- Pending webhook deliveries (all endpoints) and the age of the oldest, in seconds.
SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_s
FROM delivery.webhook_deliveries WHERE status = 'pending';

-- name: create_webhook
-- Register an endpoint.
INSERT INTO delivery.webhook_endpoints (id, url, event_types, secret) VALUES ($1, $2, $3, $4)
RETURNING id, url, event_types, created_at, failing_since, disabled_at, disabled_reason;

-- name: list_webhooks
-- Every endpoint (without secrets), oldest first.
SELECT id, url, event_types, created_at, failing_since, disabled_at, disabled_reason
FROM delivery.webhook_endpoints ORDER BY created_at, id;

-- name: delete_webhook
-- Remove an endpoint and its deliveries; returns its id when it existed.
DELETE FROM delivery.webhook_endpoints WHERE id = $1 RETURNING id;

-- name: enable_webhook
-- Re-enable an endpoint (its pending deliveries go out again, in order); returns its id when it existed.
UPDATE delivery.webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL
WHERE id = $1 RETURNING id;

-- name: webhook_deliveries
-- An endpoint's deliveries, newest first, before id $2, at most $3.
SELECT id, chat_id, event_id, type, status, attempts, next_attempt_at, last_status, last_error, created_at,
       delivered_at
FROM delivery.webhook_deliveries
WHERE endpoint_id = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: redeliver_webhook
-- Send a delivery again as soon as it is the oldest pending of its chat; returns its id when it exists.
UPDATE delivery.webhook_deliveries SET status = 'pending', next_attempt_at = now(), delivered_at = NULL
WHERE id = $1 AND endpoint_id = $2 RETURNING id;

-- name: save_operator_queues
-- A poll's operator profile changes: $1-$3 the operators' queues (comma-joined) and names now, $4 operators whose profile was removed
-- (back to `default` only). Keys never repeat within an array.
WITH saved AS (
    INSERT INTO delivery.operator_queues AS o (operator_id, queues, display_name)
    SELECT u.operator_id, string_to_array(u.queues, ','), u.display_name
    FROM unnest($1::text[], $2::text[], $3::text[]) AS u(operator_id, queues, display_name)
    ON CONFLICT (operator_id) DO UPDATE SET queues = excluded.queues, display_name = excluded.display_name
)
DELETE FROM delivery.operator_queues WHERE operator_id = ANY($4::text[]);

-- name: operator_queues
-- The queues of an operator with a profile (no row: `default` only), comma-joined.
SELECT array_to_string(queues, ',') FROM delivery.operator_queues WHERE operator_id = $1;
