-- Telegram users linked to customers: the bot links one when a customer
-- starts it, and the WebApp acts for the customer its initData's user is
-- linked to. A Telegram user is one customer, a customer one Telegram user.
CREATE TABLE telegram_links (
    telegram_user_id bigint      PRIMARY KEY CHECK (telegram_user_id > 0),
    customer_id      text        NOT NULL UNIQUE REFERENCES customers (customer_id),
    linked_at        timestamptz NOT NULL DEFAULT now()
);

-- Single-use codes that link a Telegram user to a customer: the customer's
-- app asks for one and opens the bot with it (t.me/<bot>?start=<code>); the
-- bot redeems it for the user who pressed Start. Only a digest is kept.
CREATE TABLE telegram_link_codes (
    code_sha256      bytea       PRIMARY KEY CHECK (length(code_sha256) = 32),
    customer_id      text        NOT NULL REFERENCES customers (customer_id),
    expires_at       timestamptz NOT NULL,
    redeemed_by      bigint,
    redeemed_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((redeemed_by IS NULL) = (redeemed_at IS NULL))
);
CREATE INDEX telegram_link_codes_customer ON telegram_link_codes (customer_id);
