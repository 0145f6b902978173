-- Acknowledged idempotency keys are pruned by age once past the dedup window (docs/operations.md,
-- "Data retention"); unacknowledged keys (their record not yet in Kafka) are never pruned.
CREATE INDEX message_keys_acked_idx ON ingest.message_keys (acked_at) WHERE acked_at IS NOT NULL;
