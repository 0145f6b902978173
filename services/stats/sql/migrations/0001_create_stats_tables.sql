-- Operator and chat counters, the chats each operator wrote to, and applied event ids.
-- Every figure is a sum of per-event increments applied once per event id (see queries.sql).

CREATE TABLE stats.processed_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Per operator and UTC day; the day comes from the fact's own timestamp, never processing time.
CREATE TABLE stats.operator_daily (
    operator_id           text NOT NULL,
    day                   date NOT NULL,
    assignments           bigint NOT NULL DEFAULT 0,
    messages_sent         bigint NOT NULL DEFAULT 0,
    chats_handled         bigint NOT NULL DEFAULT 0,
    answered              bigint NOT NULL DEFAULT 0,
    released              bigint NOT NULL DEFAULT 0,
    timed_out             bigint NOT NULL DEFAULT 0,
    reassigned_away       bigint NOT NULL DEFAULT 0,
    first_response_count  bigint NOT NULL DEFAULT 0,
    first_response_ms_sum bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (operator_id, day)
);
CREATE INDEX operator_daily_day_idx ON stats.operator_daily (day);

-- All time per operator: the additive counters equal the sum of the daily rows, but
-- chats_handled counts distinct chats overall, which no sum of days can give.
CREATE TABLE stats.operator_totals (
    operator_id           text PRIMARY KEY,
    assignments           bigint NOT NULL DEFAULT 0,
    messages_sent         bigint NOT NULL DEFAULT 0,
    chats_handled         bigint NOT NULL DEFAULT 0,
    answered              bigint NOT NULL DEFAULT 0,
    released              bigint NOT NULL DEFAULT 0,
    timed_out             bigint NOT NULL DEFAULT 0,
    reassigned_away       bigint NOT NULL DEFAULT 0,
    first_response_count  bigint NOT NULL DEFAULT 0,
    first_response_ms_sum bigint NOT NULL DEFAULT 0
);

-- The distinct chats behind chats_handled: per day and overall.
CREATE TABLE stats.operator_chat_days (
    operator_id text NOT NULL,
    day         date NOT NULL,
    chat_id     text NOT NULL,
    PRIMARY KEY (operator_id, day, chat_id)
);

CREATE TABLE stats.operator_chats (
    operator_id text NOT NULL,
    chat_id     text NOT NULL,
    PRIMARY KEY (operator_id, chat_id)
);

CREATE TABLE stats.chat_totals (
    chat_id           text PRIMARY KEY,
    user_messages     bigint NOT NULL DEFAULT 0,
    operator_messages bigint NOT NULL DEFAULT 0,
    assignments       bigint NOT NULL DEFAULT 0
);

-- `switchboard stats rebuild` replays chat.lifecycle into a shadow schema shaped exactly like
-- this one; the copy is made from the catalog so it can never drift from these tables.
CREATE FUNCTION stats.create_shadow_schema(target text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tbl record;
BEGIN
    IF target = 'stats' OR target !~ '^stats_[a-z0-9_]+$' THEN
        RAISE EXCEPTION 'shadow schema name % must look like stats_<name>', target;
    END IF;
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', target);
    EXECUTE format('CREATE SCHEMA %I', target);
    FOR tbl IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'stats' AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
        ORDER BY c.relname
    LOOP
        EXECUTE format('CREATE TABLE %I.%I (LIKE stats.%I INCLUDING ALL)', target, tbl.relname, tbl.relname);
    END LOOP;
END;
$$;

CREATE FUNCTION stats.drop_shadow_schema(target text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF target = 'stats' OR target !~ '^stats_[a-z0-9_]+$' THEN
        RAISE EXCEPTION 'shadow schema name % must look like stats_<name>', target;
    END IF;
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', target);
END;
$$;
