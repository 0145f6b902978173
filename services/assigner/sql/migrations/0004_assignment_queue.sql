-- Each assignment records the queue its chat was in when it started (docs/contract.md "Routing"),
-- so `switchboard reconcile` recounts stats' per-queue `assigned` exactly: a chat's own queue may
-- have changed since. Assignments made before routing existed were all in `default`.
ALTER TABLE assigner.assignments ADD COLUMN queue_id text NOT NULL DEFAULT 'default';
