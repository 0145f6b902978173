-- Queue depth for the operator stream: which queue each waiting chat is in (from chat_queued,
-- chat_routed, chat_assigned and chat_completed), and the count per queue, kept in the consumer's
-- transaction with its event ids (each fact counted once). `version` grows with every change, so a
-- listener that also loads the table never takes an older count for a newer one.

CREATE TABLE delivery.waiting_chats (
    chat_id  text PRIMARY KEY,
    queue_id text NOT NULL
);

CREATE TABLE delivery.queue_depths (
    queue_id text PRIMARY KEY,
    waiting  integer NOT NULL,
    version  bigint NOT NULL
);
