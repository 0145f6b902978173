-- Which queues each operator with a profile pulls from (operator_profile_changed facts): the queues
-- whose depth its operator stream shows. An operator without a row is a member of `default` only.
CREATE TABLE delivery.operator_queues (
    operator_id  text PRIMARY KEY,
    queues       text[] NOT NULL,
    display_name text NOT NULL DEFAULT ''
);
