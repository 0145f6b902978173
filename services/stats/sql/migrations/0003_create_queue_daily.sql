-- Per queue and UTC day (docs/stats.md, "Per queue"): chats queued, assigned, answered, completed,
-- the first-assignment wait (count, sum, histogram) and how many first assignments met the SLA.
-- Each figure is a sum of per-event increments applied once per event id, like every stats table;
-- the day comes from the fact's own timestamp. `stats.create_shadow_schema` copies this table too,
-- so `switchboard stats rebuild` replays and compares it with the others.
CREATE TABLE stats.queue_daily (
    queue_id             text NOT NULL,
    day                  date NOT NULL,
    queued               bigint NOT NULL DEFAULT 0,
    assigned             bigint NOT NULL DEFAULT 0,
    answered             bigint NOT NULL DEFAULT 0,
    completed            bigint NOT NULL DEFAULT 0,
    first_wait_count     bigint NOT NULL DEFAULT 0,
    first_wait_ms_sum    bigint NOT NULL DEFAULT 0,
    sla_met              bigint NOT NULL DEFAULT 0,
    -- The histogram: first waits per bucket (not cumulative), bounds inclusive, in seconds.
    first_wait_le_5s     bigint NOT NULL DEFAULT 0,
    first_wait_le_15s    bigint NOT NULL DEFAULT 0,
    first_wait_le_30s    bigint NOT NULL DEFAULT 0,
    first_wait_le_60s    bigint NOT NULL DEFAULT 0,
    first_wait_le_120s   bigint NOT NULL DEFAULT 0,
    first_wait_le_300s   bigint NOT NULL DEFAULT 0,
    first_wait_le_600s   bigint NOT NULL DEFAULT 0,
    first_wait_over_600s bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, day)
);
-- One day's page of queues (GET /v1/stats/queues?day=) is an index range scan in queue order.
CREATE INDEX queue_daily_day_queue_idx ON stats.queue_daily (day, queue_id);
