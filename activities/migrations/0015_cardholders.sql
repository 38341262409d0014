-- The customer's cardholder at the issuer: one person there, however many
-- cards they hold. Recorded when it is created, so a later card (another
-- kind, another address) reuses it instead of registering the person again.
CREATE TABLE cardholders (
    customer_id   text        PRIMARY KEY REFERENCES customers (customer_id),
    cardholder_id text        NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
