-- Routing (docs/contract.md "Routing"): queues (teams), operator profiles, and each chat's queue,
-- priority, skills and rank. With no configuration every chat is in `default` with priority 0 and no
-- skills, so its rank is its waiting_since and the pull is the FIFO of §3.

CREATE TABLE assigner.queues (
    queue_id               text PRIMARY KEY CHECK (queue_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name                   text NOT NULL,
    priority_step_s        integer NOT NULL DEFAULT 60 CHECK (priority_step_s >= 0),
    sla_first_assignment_s integer NOT NULL DEFAULT 60 CHECK (sla_first_assignment_s >= 0),
    skills_relax_after_s   integer CHECK (skills_relax_after_s >= 0),
    idle_timeout_s         integer CHECK (idle_timeout_s > 0),
    repeat_cooldown_s      integer CHECK (repeat_cooldown_s >= 0),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
INSERT INTO assigner.queues (queue_id, name) VALUES ('default', 'Default');

-- `default` always exists: every chat routed nowhere else, and every operator without a profile, is in it.
CREATE FUNCTION assigner.keep_default_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.queue_id = 'default' THEN
        RAISE EXCEPTION 'the default queue cannot be deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER queues_keep_default BEFORE DELETE ON assigner.queues
    FOR EACH ROW EXECUTE FUNCTION assigner.keep_default_queue();

-- An operator without a row here is a member of `default` with OPERATOR_CAPACITY, no skills, available.
CREATE TABLE assigner.operators (
    operator_id  text PRIMARY KEY CHECK (length(operator_id) BETWEEN 1 AND 255),
    display_name text NOT NULL DEFAULT '',
    queues       text[] NOT NULL DEFAULT '{default}',
    skills       text[] NOT NULL DEFAULT '{}',
    capacity     integer CHECK (capacity >= 0),  -- null: SWITCHBOARD_OPERATOR_CAPACITY
    status       text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'away', 'offline')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operators_status_idx ON assigner.operators (status);

-- rank = waiting_since - priority * the queue's priority_step_s, written with every chat (write_changes)
-- and rewritten when a queue's step changes. skills are sorted and distinct, so equal sets compare equal.
-- opened_at: when the chat was opened or reopened; first_assigned_at: its first assignment since then
-- (the first-assignment wait and SLA of chat_assigned).
ALTER TABLE assigner.chats
    ADD COLUMN queue_id          text NOT NULL DEFAULT 'default',
    ADD COLUMN priority          smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    ADD COLUMN skills            text[] NOT NULL DEFAULT '{}',
    ADD COLUMN rank              timestamptz,
    ADD COLUMN opened_at         timestamptz,
    ADD COLUMN first_assigned_at timestamptz;

UPDATE assigner.chats SET rank = waiting_since WHERE waiting_since IS NOT NULL;

-- The routed pull: one lane per (queue, skill set), waiting chats in rank order, so each lane's claim
-- is an index probe at any queue size; the lanes themselves are found by a skip scan of the same index.
CREATE INDEX chats_lane_idx ON assigner.chats (queue_id, skills, rank, chat_id) WHERE state = 'waiting_assignment';
-- Whether any waiting chat is routed at all (the unrouted pull keeps the global FIFO claim): a probe.
CREATE INDEX chats_routed_waiting_idx ON assigner.chats (chat_id)
    WHERE state = 'waiting_assignment' AND (queue_id <> 'default' OR priority <> 0 OR skills <> '{}');
-- A deleted queue's chats move to `default`.
CREATE INDEX chats_queue_id_idx ON assigner.chats (queue_id) WHERE queue_id <> 'default';
