-- Named queries of the assigner. Python refers to them by name (shared.db.Queries).

-- name: lock_chats
-- Load and lock chats with their current assignment, in chat_id order so batches never deadlock.
-- After waiting for a concurrent writer's lock, Postgres re-checks the chat row at its newest version
-- but keeps the assignment row this statement's snapshot joined (absent, or the previous assignment):
-- `assignment_stale` flags such rows; the store re-reads them (read_chats) now that it holds the lock.
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.assignment_id, c.waiting_since,
       c.queued_at, c.operator_replied_at, c.last_user_message_at, c.message_count, c.created_at,
       c.queue_id, c.priority, c.skills, c.rank, c.opened_at, c.first_assigned_at,
       a.started_at AS assignment_started_at,
       coalesce(a.first_response_at IS NOT NULL, false) AS assignment_responded,
       (c.assignment_id IS NOT NULL AND a.assignment_id IS DISTINCT FROM c.assignment_id) AS assignment_stale
FROM assigner.chats c
LEFT JOIN assigner.assignments a ON a.assignment_id = c.assignment_id
WHERE c.chat_id = ANY($1::text[])
ORDER BY c.chat_id
FOR UPDATE OF c;

-- name: read_chats
-- Chats with their current assignment, without locking: run by a holder of their locks, so this
-- statement's fresh snapshot sees what the writer it waited for committed.
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.assignment_id, c.waiting_since,
       c.queued_at, c.operator_replied_at, c.last_user_message_at, c.message_count, c.created_at,
       c.queue_id, c.priority, c.skills, c.rank, c.opened_at, c.first_assigned_at,
       a.started_at AS assignment_started_at,
       coalesce(a.first_response_at IS NOT NULL, false) AS assignment_responded
FROM assigner.chats c
LEFT JOIN assigner.assignments a ON a.assignment_id = c.assignment_id
WHERE c.chat_id = ANY($1::text[]);

-- name: lock_chats_with_known
-- lock_chats for the consumer, each chat with those of the messages ($2 chat ids, $3 message ids, pairwise) it
-- already stores (a message is applied once, whatever its event id): one primary-key probe per message, not one per
-- message id and chat. The pairs are probed once and grouped by chat, then joined to the locked chats (a subquery
-- per chat re-read every pair for every chat: chats x messages rows, a poll of 500 read 250,000). One round trip
-- instead of two; the ids are read with the statement's snapshot, before the lock is granted, so a concurrent
-- writer of the same message is caught by the messages primary key instead (the batch fails and is retried, then
-- sees it). Rows flagged `assignment_stale` are re-read as in lock_chats.
WITH known AS (
    SELECT m.chat_id, array_agg(m.message_id) AS message_ids
    FROM unnest($2::text[], $3::text[]) AS k (chat_id, message_id)
    JOIN assigner.messages m ON m.chat_id = k.chat_id AND m.message_id = k.message_id
    GROUP BY m.chat_id
)
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.assignment_id, c.waiting_since,
       c.queued_at, c.operator_replied_at, c.last_user_message_at, c.message_count, c.created_at,
       c.queue_id, c.priority, c.skills, c.rank, c.opened_at, c.first_assigned_at,
       a.started_at AS assignment_started_at,
       coalesce(a.first_response_at IS NOT NULL, false) AS assignment_responded,
       (c.assignment_id IS NOT NULL AND a.assignment_id IS DISTINCT FROM c.assignment_id) AS assignment_stale,
       coalesce(known.message_ids, '{}') AS known_message_ids
FROM assigner.chats c
LEFT JOIN assigner.assignments a ON a.assignment_id = c.assignment_id
LEFT JOIN known ON known.chat_id = c.chat_id
WHERE c.chat_id = ANY($1::text[])
ORDER BY c.chat_id
FOR UPDATE OF c;

-- name: write_changes
-- One round trip for a transaction's inserts: chats upserted, assignments started, messages stored,
-- facts queued for the relay (in fact order). Updates of existing assignments (first responses,
-- ends) run before it, as their own statement (update_assignments): an assignment ended and one started
-- on the same chat must not meet in one statement (the one-active-per-chat index checks each row as it goes).
WITH chats_written AS (
    -- rank = waiting_since - priority x the queue's priority_step_s (docs/contract.md "Routing").
    INSERT INTO assigner.chats AS c (chat_id, state, assigned_operator_id, last_operator_id, assignment_id,
                                     waiting_since, queued_at, operator_replied_at, last_user_message_at,
                                     message_count, created_at, updated_at, queue_id, priority, skills,
                                     opened_at, first_assigned_at, rank)
    SELECT r.chat_id, r.state, r.assigned_operator_id, r.last_operator_id, r.assignment_id, r.waiting_since,
           r.queued_at, r.operator_replied_at, r.last_user_message_at, r.message_count, r.created_at,
           r.updated_at, r.queue_id, r.priority, string_to_array(r.skills, ','), r.opened_at,
           r.first_assigned_at,
           r.waiting_since - make_interval(secs => r.priority * coalesce(q.priority_step_s, 60))
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[],
                $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::int[],
                $11::timestamptz[], $12::timestamptz[], $33::text[], $34::smallint[],
                $35::text[], $36::timestamptz[], $37::timestamptz[])
         AS r(chat_id, state, assigned_operator_id, last_operator_id, assignment_id, waiting_since, queued_at,
              operator_replied_at, last_user_message_at, message_count, created_at, updated_at, queue_id,
              priority, skills, opened_at, first_assigned_at)
    LEFT JOIN assigner.queues q ON q.queue_id = r.queue_id
    ON CONFLICT (chat_id) DO UPDATE SET
        state = EXCLUDED.state,
        assigned_operator_id = EXCLUDED.assigned_operator_id,
        last_operator_id = EXCLUDED.last_operator_id,
        assignment_id = EXCLUDED.assignment_id,
        waiting_since = EXCLUDED.waiting_since,
        queued_at = EXCLUDED.queued_at,
        operator_replied_at = EXCLUDED.operator_replied_at,
        last_user_message_at = EXCLUDED.last_user_message_at,
        message_count = EXCLUDED.message_count,
        updated_at = EXCLUDED.updated_at,
        queue_id = EXCLUDED.queue_id,
        priority = EXCLUDED.priority,
        skills = EXCLUDED.skills,
        opened_at = EXCLUDED.opened_at,
        first_assigned_at = EXCLUDED.first_assigned_at,
        rank = EXCLUDED.rank
    RETURNING 1
), assignments_started AS (
    INSERT INTO assigner.assignments (assignment_id, chat_id, operator_id, via, started_at, queue_id)
    SELECT * FROM unnest($13::uuid[], $14::text[], $15::text[], $16::text[], $17::timestamptz[], $38::text[])
    RETURNING 1
), messages_stored AS (
    INSERT INTO assigner.messages (chat_id, message_id, seq, sender, operator_id, text, sent_at, recorded_at,
                                   assignment_id, handled_by, event_id)
    SELECT * FROM unnest($18::text[], $19::text[], $20::int[], $21::text[], $22::text[], $23::text[],
                         $24::timestamptz[], $25::timestamptz[], $26::uuid[], $27::text[], $28::uuid[])
    RETURNING 1
), facts_queued AS (
    INSERT INTO assigner.outbox (chat_id, event_id, type, envelope)
    SELECT chat_id, event_id, type, envelope
    FROM unnest($29::text[], $30::uuid[], $31::text[], $32::text[]) WITH ORDINALITY
         AS f(chat_id, event_id, type, envelope, ord)
    ORDER BY ord
    RETURNING 1
)
SELECT (SELECT count(*) FROM chats_written), (SELECT count(*) FROM assignments_started),
       (SELECT count(*) FROM messages_stored), (SELECT count(*) FROM facts_queued);

-- name: update_assignments
-- First responses and ends of existing assignments, in one statement (one row per assignment: the caller
-- merges an assignment's first response and its end). A first response is kept once set, an end too.
UPDATE assigner.assignments a
SET first_response_at = coalesce(a.first_response_at, u.first_response_at),
    ended_at = coalesce(a.ended_at, u.ended_at),
    outcome = CASE WHEN a.ended_at IS NULL AND u.ended_at IS NOT NULL THEN u.outcome ELSE a.outcome END
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[])
     AS u(assignment_id, first_response_at, ended_at, outcome)
WHERE a.assignment_id = u.assignment_id
  AND ((a.first_response_at IS NULL AND u.first_response_at IS NOT NULL)
       OR (a.ended_at IS NULL AND u.ended_at IS NOT NULL));

-- name: lock_operator
-- Serialise one operator's pulls and reassignments to it (capacity is checked under this lock). Lock
-- order everywhere: chats first (chat_id order), then operators (sorted), then SKIP LOCKED claims.
SELECT pg_advisory_xact_lock(hashtext('assigner.operator:' || $1::text));

-- name: active_assignments_of
-- An operator's active assignments, oldest first.
SELECT assignment_id, chat_id, started_at
FROM assigner.assignments
WHERE operator_id = $1 AND ended_at IS NULL
ORDER BY started_at, assignment_id;

-- name: claim_next_chat
-- The oldest waiting chat this operator may take (not theirs last, unless cooled down), skipping locked
-- rows and the chats in $3 (already given to other pullers by this transaction).
SELECT chat_id, state, assigned_operator_id, last_operator_id, assignment_id, waiting_since, queued_at,
       operator_replied_at, last_user_message_at, message_count, created_at,
       queue_id, priority, skills, rank, opened_at, first_assigned_at
FROM assigner.chats
WHERE state = 'waiting_assignment'
  AND (last_operator_id IS DISTINCT FROM $1::text OR queued_at <= $2::timestamptz)
  AND chat_id <> ALL($3::text[])
ORDER BY waiting_since, chat_id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: claim_waiting_chats
-- The $1 oldest waiting chats nobody else holds, locked: candidates for a batch of pulls.
SELECT chat_id, state, assigned_operator_id, last_operator_id, assignment_id, waiting_since, queued_at,
       operator_replied_at, last_user_message_at, message_count, created_at,
       queue_id, priority, skills, rank, opened_at, first_assigned_at
FROM assigner.chats
WHERE state = 'waiting_assignment'
ORDER BY waiting_since, chat_id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: lock_operators
-- lock_operator for several operators, in the order given (the caller sorts them: no deadlock).
SELECT pg_advisory_xact_lock(hashtext('assigner.operator:' || o)) FROM unnest($1::text[]) AS o;

-- name: lock_chats_of_assignments
-- lock_chats for the chats of the assignments $1, each with the requested assignments it has (their
-- ids, operators, ends and outcomes as arrays): the records an ending checks and the chats it changes,
-- in one round trip. The records are read with this statement's snapshot, like the joined assignment
-- (a concurrent end is then seen on the chat, which is re-checked under its lock); rows flagged
-- `assignment_stale` are re-read as in lock_chats. Its chat columns are lock_chats' on purpose (SQL has no
-- shared column list; chat_from_row reads them by name), as in lock_chats_with_known.
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.assignment_id, c.waiting_since,
       c.queued_at, c.operator_replied_at, c.last_user_message_at, c.message_count, c.created_at,
       c.queue_id, c.priority, c.skills, c.rank, c.opened_at, c.first_assigned_at,
       a.started_at AS assignment_started_at,
       coalesce(a.first_response_at IS NOT NULL, false) AS assignment_responded,
       (c.assignment_id IS NOT NULL AND a.assignment_id IS DISTINCT FROM c.assignment_id) AS assignment_stale,
       r.ids AS requested_ids, r.operators AS requested_operators, r.ended AS requested_ended,
       r.outcomes AS requested_outcomes
FROM assigner.chats c
LEFT JOIN assigner.assignments a ON a.assignment_id = c.assignment_id
CROSS JOIN LATERAL (
    SELECT array_agg(x.assignment_id) AS ids, array_agg(x.operator_id) AS operators,
           array_agg(x.ended_at) AS ended, array_agg(x.outcome) AS outcomes
    FROM assigner.assignments x
    WHERE x.assignment_id = ANY($1::uuid[]) AND x.chat_id = c.chat_id) r
WHERE c.chat_id IN (SELECT chat_id FROM assigner.assignments WHERE assignment_id = ANY($1::uuid[]))
ORDER BY c.chat_id
FOR UPDATE OF c;

-- name: chat_views
-- Several chats as the API shows them, each with its most recent messages (up to $2, oldest first)
-- as a JSON array: one round trip for every chat a batch of pulls hands out.
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.waiting_since, c.message_count,
       c.queue_id, c.priority, c.skills,
       (SELECT q.idle_timeout_s FROM assigner.queues q WHERE q.queue_id = c.queue_id) AS queue_idle_timeout_s,
       coalesce((
           SELECT json_agg(json_build_object(
                      'message_id', m.message_id, 'sender', m.sender, 'operator_id', m.operator_id,
                      'text', m.text, 'sent_at', coalesce(m.sent_at, m.recorded_at),
                      'recorded_at', m.recorded_at) ORDER BY m.seq)
           FROM (SELECT * FROM assigner.messages WHERE chat_id = c.chat_id ORDER BY seq DESC LIMIT $2) m
       ), '[]') AS messages
FROM assigner.chats c
WHERE c.chat_id = ANY($1::text[]);

-- name: assignment_by_id
-- One assignment record.
SELECT assignment_id, chat_id, operator_id, via, started_at, first_response_at, ended_at, outcome
FROM assigner.assignments
WHERE assignment_id = $1;

-- name: count_by_state
-- Chats per state.
SELECT state, count(*) AS n FROM assigner.chats GROUP BY state;

-- name: oldest_waiting
-- When the longest-waiting chat entered the queue.
SELECT min(waiting_since) FROM assigner.chats WHERE state = 'waiting_assignment';

-- name: active_by_operator
-- Active assignments per operator.
SELECT operator_id, count(*) AS n FROM assigner.assignments WHERE ended_at IS NULL GROUP BY operator_id ORDER BY operator_id;

-- name: try_lock_outbox
-- Only one relay publishes at a time, so facts leave in id order.
SELECT pg_try_advisory_xact_lock(hashtext('assigner.outbox.relay'));

-- name: outbox_batch
-- The oldest unpublished facts, with what their CloudEvents headers need (occurred_at as the envelope writes it).
SELECT id, chat_id, event_id, type, envelope, envelope::json ->> 'occurred_at' AS occurred_at
FROM assigner.outbox ORDER BY id LIMIT $1;

-- name: outbox_delete
-- Forget facts Kafka has acknowledged.
DELETE FROM assigner.outbox WHERE id = ANY($1::bigint[]);

-- name: outbox_backlog
-- Facts not yet published.
SELECT count(*) FROM assigner.outbox;

-- ---- retention and pagination (docs/operations.md "Data retention", docs/contract.md "Lists") ----

-- name: purge_completed_texts
-- Blank the message texts of up to $2 chats completed (and unchanged) since before $1; returns (messages, chats).
WITH due AS MATERIALIZED (
    SELECT chat_id FROM assigner.chats
    WHERE state = 'completed' AND updated_at < $1
      AND (content_erased_at IS NULL OR content_erased_at < updated_at)
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE assigner.chats c SET content_erased_at = greatest(now(), c.updated_at)
    FROM due WHERE c.chat_id = due.chat_id
    RETURNING 1
), blanked AS (
    UPDATE assigner.messages m SET text = NULL
    FROM due WHERE m.chat_id = due.chat_id AND m.text IS NOT NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM blanked) AS removed, (SELECT count(*) FROM marked) AS claimed;

-- name: erase_chat_texts
-- Blank every message text of one chat (the caller holds its lock) and remember when; returns the messages blanked.
WITH marked AS (
    UPDATE assigner.chats SET content_erased_at = greatest(now(), updated_at) WHERE chat_id = $1 RETURNING 1
), blanked AS (
    UPDATE assigner.messages SET text = NULL WHERE chat_id = $1 AND text IS NOT NULL RETURNING 1
)
SELECT count(*) FROM blanked;

-- name: lock_outbox_relay
-- Wait for the relay's batch in flight and keep the relay out until commit (same key as try_lock_outbox).
SELECT pg_advisory_xact_lock(hashtext('assigner.outbox.relay'));

-- name: erase_outbox_texts
-- Blank the text of one chat's unpublished message_recorded facts ("" : event schema v1 wants a string).
UPDATE assigner.outbox
SET envelope = jsonb_set(envelope::jsonb, '{payload,text}', '""'::jsonb)::text
WHERE chat_id = $1 AND type = 'message_recorded';

-- name: stuck_chats_page
-- Chats waiting, or assigned, since before $1, oldest first then by chat id, after keyset ($3, $4); at most $2.
SELECT c.chat_id, c.state, c.assigned_operator_id, c.last_operator_id, c.waiting_since,
       a.started_at AS assigned_at, coalesce(a.started_at, c.waiting_since) AS since
FROM assigner.chats c
LEFT JOIN assigner.assignments a ON a.assignment_id = c.assignment_id
WHERE ((c.state = 'waiting_assignment' AND c.waiting_since < $1)
       OR (c.state = 'assigned' AND a.started_at < $1))
  AND ($3::timestamptz IS NULL
       OR (coalesce(a.started_at, c.waiting_since), c.chat_id) > ($3::timestamptz, $4::text))
ORDER BY coalesce(a.started_at, c.waiting_since), c.chat_id
LIMIT $2;

-- ---- routing (docs/contract.md "Routing") ----

-- name: routing_context
-- The pullers' profiles (absent: no profile), the queues they (and profile-less operators) reach,
-- whether any waiting chat is routed at all (if none, the pull keeps the global FIFO claim), and their
-- active assignments, oldest first per operator (as arrays): all a batch of pulls reads, in one round
-- trip. Run under the operators' locks, so what it reads is what this transaction may rely on.
SELECT
    (SELECT coalesce(json_agg(o), '[]') FROM (
        SELECT operator_id, display_name, queues, skills, capacity, status
        FROM assigner.operators WHERE operator_id = ANY($1::text[])) o)::text AS operators,
    (SELECT coalesce(json_agg(q), '[]') FROM (
        SELECT queue_id, name, priority_step_s, sla_first_assignment_s, skills_relax_after_s, idle_timeout_s,
               repeat_cooldown_s
        FROM assigner.queues
        WHERE queue_id = 'default'
           OR queue_id IN (SELECT unnest(queues) FROM assigner.operators WHERE operator_id = ANY($1::text[]))) q
    )::text AS queues,
    EXISTS (SELECT 1 FROM assigner.chats
            WHERE state = 'waiting_assignment' AND (queue_id <> 'default' OR priority <> 0 OR skills <> '{}'))
        AS routed_waiting,
    h.operators AS held_operators, h.ids AS held_ids, h.chats AS held_chats, h.started AS held_started
FROM (
    SELECT array_agg(operator_id ORDER BY operator_id, started_at, assignment_id) AS operators,
           array_agg(assignment_id ORDER BY operator_id, started_at, assignment_id) AS ids,
           array_agg(chat_id ORDER BY operator_id, started_at, assignment_id) AS chats,
           array_agg(started_at ORDER BY operator_id, started_at, assignment_id) AS started
    FROM assigner.assignments
    WHERE operator_id = ANY($1::text[]) AND ended_at IS NULL) h;

-- name: waiting_lanes
-- The distinct (queue, skill set) pairs of waiting chats in the queues $1, each with its lowest rank: a
-- skip scan of chats_lane_idx per queue (`queue_id = q AND skills > last` are both index conditions,
-- so each step is one probe: a row comparison under `queue_id = ANY(...)` was a filter, which read
-- every waiting chat of the queues, 3.5 s for 5 queues at 1M). The index is ordered (queue, skills,
-- rank, chat_id), so the first entry a step finds is its lane's head: one probe per lane gives both
-- (a second probe per lane for the head doubled the statement's cost, 1.3 ms a pull batch at 1M).
WITH RECURSIVE lanes AS (
    SELECT q.queue_id, f.skills, f.rank FROM unnest($1::text[]) AS q(queue_id)
    CROSS JOIN LATERAL (
        SELECT c.skills, c.rank FROM assigner.chats c
        WHERE c.state = 'waiting_assignment' AND c.queue_id = q.queue_id
        ORDER BY c.skills, c.rank, c.chat_id LIMIT 1) f
    UNION ALL
    SELECT l.queue_id, n.skills, n.rank FROM lanes l
    CROSS JOIN LATERAL (
        SELECT c.skills, c.rank FROM assigner.chats c
        WHERE c.state = 'waiting_assignment' AND c.queue_id = l.queue_id AND c.skills > l.skills
        ORDER BY c.skills, c.rank, c.chat_id LIMIT 1) n
)
SELECT queue_id, skills, rank AS head FROM lanes;

-- name: claim_lanes
-- Per lane ($1 queue, $2 skills joined by ',', $3 how many, $4 only chats waiting since then or null),
-- its lowest-ranked waiting chats nobody else holds, locked: one index probe per lane. With $5 (an
-- operator), only chats it may take by invariant 3 ($6: per lane, queued at or before then if it had
-- them last), past the chats in $7 (already given by this transaction).
SELECT c.* FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $6::timestamptz[])
    AS l(queue_id, skills, k, relaxed_before, cooled_before)
CROSS JOIN LATERAL (
    SELECT chat_id, state, assigned_operator_id, last_operator_id, assignment_id, waiting_since, queued_at,
           operator_replied_at, last_user_message_at, message_count, created_at,
           queue_id, priority, skills, rank, opened_at, first_assigned_at
    FROM assigner.chats ch
    WHERE ch.state = 'waiting_assignment' AND ch.queue_id = l.queue_id
      AND ch.skills = string_to_array(l.skills, ',')
      AND (l.relaxed_before IS NULL OR ch.waiting_since <= l.relaxed_before)
      AND ($5::text IS NULL OR ch.last_operator_id IS DISTINCT FROM $5::text OR ch.queued_at <= l.cooled_before)
      AND ch.chat_id <> ALL($7::text[])
    ORDER BY ch.rank, ch.chat_id
    LIMIT l.k
    FOR UPDATE SKIP LOCKED
) c;

-- name: queue_exists
-- Which of the queues $1 exist, key-share locked until commit (a concurrent delete waits).
SELECT queue_id FROM assigner.queues WHERE queue_id = ANY($1::text[]) FOR KEY SHARE;

-- name: queue_by_id
-- One queue.
SELECT queue_id, name, priority_step_s, sla_first_assignment_s, skills_relax_after_s, idle_timeout_s,
       repeat_cooldown_s, created_at, updated_at
FROM assigner.queues WHERE queue_id = $1;

-- name: queues_page
-- Queues by id after $2 (keyset), at most $1, each with its waiting chats and the oldest one's
-- waiting_since (the admin page's depth and oldest wait): only the page's queues are counted, each
-- through its entries in the waiting-chat lane index.
SELECT q.queue_id, q.name, q.priority_step_s, q.sla_first_assignment_s, q.skills_relax_after_s, q.idle_timeout_s,
       q.repeat_cooldown_s, q.created_at, q.updated_at, w.waiting, w.oldest_waiting_since
FROM (SELECT * FROM assigner.queues WHERE $2::text IS NULL OR queue_id > $2 ORDER BY queue_id LIMIT $1) q
CROSS JOIN LATERAL (
    SELECT count(*) AS waiting, min(c.waiting_since) AS oldest_waiting_since
    FROM assigner.chats c
    WHERE c.state = 'waiting_assignment' AND c.queue_id = q.queue_id
) w
ORDER BY q.queue_id;

-- name: lock_queue_table
-- Serialise queue creations (the 500-queue limit is counted under it) and deletions.
SELECT pg_advisory_xact_lock(hashtext('assigner.queues'));

-- name: count_queues
-- How many queues exist.
SELECT count(*) FROM assigner.queues;

-- name: upsert_queue
-- Create or replace a queue's settings; returns whether it existed before.
INSERT INTO assigner.queues AS q (queue_id, name, priority_step_s, sla_first_assignment_s, skills_relax_after_s,
                                  idle_timeout_s, repeat_cooldown_s)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (queue_id) DO UPDATE SET
    name = EXCLUDED.name, priority_step_s = EXCLUDED.priority_step_s,
    sla_first_assignment_s = EXCLUDED.sla_first_assignment_s, skills_relax_after_s = EXCLUDED.skills_relax_after_s,
    idle_timeout_s = EXCLUDED.idle_timeout_s, repeat_cooldown_s = EXCLUDED.repeat_cooldown_s, updated_at = now()
RETURNING (xmax <> 0) AS existed;

-- name: rerank_queue
-- The ranks of a queue's waiting chats after its priority_step_s changed.
UPDATE assigner.chats c
SET rank = c.waiting_since - make_interval(secs => c.priority * $2::int)
WHERE c.state = 'waiting_assignment' AND c.queue_id = $1;

-- name: delete_queue
-- Remove a queue (the trigger keeps `default`); returns whether it existed.
DELETE FROM assigner.queues WHERE queue_id = $1 RETURNING queue_id;

-- name: chats_in_queue
-- The open (not completed) chats of a queue, locked in chat_id order: a deleted queue's chats move.
SELECT chat_id FROM assigner.chats WHERE queue_id = $1 AND state <> 'completed' ORDER BY chat_id FOR UPDATE;

-- name: move_completed_chats
-- A deleted queue's completed chats read as `default` (they reopen there).
UPDATE assigner.chats SET queue_id = 'default' WHERE queue_id = $1 AND state = 'completed';

-- name: drop_queue_from_operators
-- Operators are no longer members of a deleted queue.
UPDATE assigner.operators SET queues = array_remove(queues, $1), updated_at = now() WHERE $1 = ANY(queues)
RETURNING operator_id, display_name, queues, skills, capacity, status;

-- name: operator_by_id
-- One operator profile.
SELECT operator_id, display_name, queues, skills, capacity, status, created_at, updated_at
FROM assigner.operators WHERE operator_id = $1;

-- name: operators_page
-- Operator profiles by id after $2 (keyset), at most $1.
SELECT operator_id, display_name, queues, skills, capacity, status, created_at, updated_at
FROM assigner.operators WHERE $2::text IS NULL OR operator_id > $2 ORDER BY operator_id LIMIT $1;

-- name: upsert_operator
-- Create or replace an operator's profile (its status is kept; a new one is available).
INSERT INTO assigner.operators AS o (operator_id, display_name, queues, skills, capacity)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (operator_id) DO UPDATE SET
    display_name = EXCLUDED.display_name, queues = EXCLUDED.queues, skills = EXCLUDED.skills,
    capacity = EXCLUDED.capacity, updated_at = now()
RETURNING operator_id, display_name, queues, skills, capacity, status, created_at, updated_at;

-- name: set_operator_status
-- Set an operator's status, creating a default profile if it had none; returns the status before.
WITH before AS (SELECT status FROM assigner.operators WHERE operator_id = $1)
INSERT INTO assigner.operators AS o (operator_id, status) VALUES ($1, $2)
ON CONFLICT (operator_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()
RETURNING coalesce((SELECT status FROM before), 'available') AS previous;

-- name: delete_operator
-- Remove an operator's profile; returns its status, if it had one.
DELETE FROM assigner.operators WHERE operator_id = $1 RETURNING status;

-- name: queue_gauges
-- Waiting chats and the oldest waiting_since per queue (every queue, zero included).
SELECT q.queue_id, count(c.chat_id) AS waiting, min(c.waiting_since) AS oldest
FROM assigner.queues q
LEFT JOIN assigner.chats c ON c.queue_id = q.queue_id AND c.state = 'waiting_assignment'
GROUP BY q.queue_id;

-- name: operators_by_status
-- Operators per status: profiles, plus operators holding chats without a profile (available).
SELECT status, count(*) AS n FROM (
    SELECT status FROM assigner.operators
    UNION ALL
    SELECT 'available' FROM (SELECT DISTINCT operator_id FROM assigner.assignments WHERE ended_at IS NULL) a
    WHERE NOT EXISTS (SELECT 1 FROM assigner.operators o WHERE o.operator_id = a.operator_id)
) s GROUP BY status;
