-- Bounded storage (docs/operations.md, "Data retention"):
-- applied event ids are pruned by age, so the prune needs an index on their timestamp;
-- a message's text can be purged or erased while its row (and every count) stays, so it may be NULL;
-- a chat remembers when its texts were last removed, so the purge visits each completed chat once
-- (and again only if it reopened, took new messages and completed again: updated_at moved past it).

CREATE INDEX processed_events_applied_idx ON assigner.processed_events (applied_at);

ALTER TABLE assigner.messages ALTER COLUMN text DROP NOT NULL;

ALTER TABLE assigner.chats ADD COLUMN content_erased_at timestamptz;

-- Only completed chats whose texts are still there: the purge is an index range scan on this.
CREATE INDEX chats_texts_due_idx ON assigner.chats (updated_at)
    WHERE state = 'completed' AND (content_erased_at IS NULL OR content_erased_at < updated_at);
