-- Settlement records a reconciliation run downloaded, staged page by page so
-- a download that a worker crash interrupted resumes where it stopped, and
-- so the records (a large report) never travel through workflow history.
-- One row per position in the provider's report; a page read again after a
-- crash rewrites the same positions.
CREATE TABLE reconciliation_records (
    run_key          text        NOT NULL,
    position         integer     NOT NULL CHECK (position >= 0),
    record_id        text        NOT NULL,
    record_type      text        NOT NULL,
    transaction_id   text,
    card_id          text        NOT NULL,
    authorization_id text,
    amount_minor     bigint      NOT NULL CHECK (amount_minor >= 0),
    currency         text        NOT NULL,
    direction        text        NOT NULL CHECK (direction IN ('debit', 'credit', 'none')),
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (run_key, position)
);
