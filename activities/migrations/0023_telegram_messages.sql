-- Notifications cardflow's bot sent through the Telegram Bot API, by the
-- notification's key and channel: a retried send finds its message here and
-- sends nothing. The Bot API takes no idempotency key, so a send whose answer
-- was lost before this row was written is sent again (at least once).
CREATE TABLE telegram_messages (
    dedupe_key  text        PRIMARY KEY CHECK (length(dedupe_key) BETWEEN 1 AND 300),
    chat_id     bigint      NOT NULL,
    message_id  bigint      NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
