-- Webhook endpoints and their deliveries (Standard Webhooks): at least once, in order per chat
-- per endpoint. A delivery row is queued in the consumer's transaction and claimed by a sender
-- with FOR UPDATE SKIP LOCKED plus a lease, so two instances never send it at the same time.

CREATE TABLE delivery.webhook_endpoints (
    id              uuid PRIMARY KEY,
    url             text NOT NULL,
    event_types     text[] NOT NULL DEFAULT '{}',   -- empty: every lifecycle fact
    secret          text NOT NULL,                  -- whsec_<base64>; needed in clear to sign
    created_at      timestamptz NOT NULL DEFAULT now(),
    failing_since   timestamptz,                    -- first failure since the last success
    disabled_at     timestamptz,
    disabled_reason text
);

CREATE TABLE delivery.webhook_deliveries (
    id              bigserial PRIMARY KEY,          -- per chat per endpoint, the sending order
    endpoint_id     uuid NOT NULL REFERENCES delivery.webhook_endpoints (id) ON DELETE CASCADE,
    chat_id         text NOT NULL,
    event_id        uuid NOT NULL,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
-- The senders' probe: due pending deliveries, and "is an older one of this chat still pending?".
CREATE INDEX webhook_deliveries_due_idx ON delivery.webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_chat_idx ON delivery.webhook_deliveries (endpoint_id, chat_id, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log_idx ON delivery.webhook_deliveries (endpoint_id, id);
