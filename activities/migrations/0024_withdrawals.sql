-- A customer's verification level, whose limits withdrawals (and the other
-- money paths) apply; an approved onboarding makes a customer `standard`.
ALTER TABLE customers ADD COLUMN kyc_tier text NOT NULL DEFAULT 'standard'
    CHECK (kyc_tier IN ('basic', 'standard', 'enhanced'));

-- Each withdrawal counted against its customer's month, once: reserved when
-- it passes the limits, paid once the bank sent it, released when it did not.
CREATE TABLE withdrawal_usage (
    request_id   text        PRIMARY KEY,
    customer_id  text        NOT NULL,
    currency     text        NOT NULL,
    amount_minor bigint      NOT NULL CHECK (amount_minor > 0),
    -- The UTC month the withdrawal counts against (from its request's time).
    month        text        NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    status       text        NOT NULL DEFAULT 'reserved'
                 CHECK (status IN ('reserved', 'paid', 'released')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX withdrawal_usage_customer_month ON withdrawal_usage (customer_id, currency, month);

-- Destinations a customer has been paid out to: a destination not here is
-- new, and a withdrawal to it waits (and above a threshold, an operator).
CREATE TABLE withdrawal_destinations (
    customer_id      text        NOT NULL,
    fingerprint      text        NOT NULL,
    first_request_id text        NOT NULL,
    first_paid_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, fingerprint)
);
