-- Telegram users linked to customers: the bot links one when a customer
-- starts it, and the WebApp acts for the customer its initData's user is
-- linked to. A Telegram user is one customer, a customer one Telegram user.
CREATE TABLE telegram_links (
    telegram_user_id bigint      PRIMARY KEY CHECK (telegram_user_id > 0),
    customer_id      text        NOT NULL UNIQUE REFERENCES customers (customer_id),
    linked_at        timestamptz NOT NULL DEFAULT now()
);
