-- Settled card transactions as the card's process posted them: clearings,
-- force posts and refunds. Cashback rules read a customer's recent purchases
-- here; statements and reconciliation read them too. One row per issuer
-- transaction id, written once (idempotent on retry).
CREATE TABLE card_transactions (
    transaction_id   text        PRIMARY KEY,
    card_id          text        NOT NULL,
    customer_id      text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('clearing', 'force_post', 'refund')),
    authorization_id text,
    -- The refund's original purchase, when the merchant names it.
    refunded_transaction_id text,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         text        NOT NULL,
    merchant_amount_minor bigint,
    merchant_currency text,
    merchant_name    text,
    mcc              text        CHECK (mcc ~ '^[0-9]{4}$'),
    -- When the issuer settled it (the clearing's own time, not when we saw it).
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_transactions_customer ON card_transactions (customer_id, occurred_at);
CREATE INDEX card_transactions_card ON card_transactions (card_id, occurred_at);
