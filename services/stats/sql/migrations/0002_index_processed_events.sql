-- Applied event ids are pruned by age once past the dedup window (docs/operations.md, "Data retention").
CREATE INDEX processed_events_applied_idx ON stats.processed_events (applied_at);
