-- Every fix a reconciliation posted through suspense, as it stood when it
-- was posted: what the issuer settled and what the card had posted for the
-- transaction then. A later run compares the card's postings now with those
-- at fix time: a posting that arrived since (a held-back webhook, the rest
-- of a clearing) would count twice on issuer:settlement, so that run posts
-- the correcting transfer once, keyed from the fix's own key, and records it
-- here so that no run corrects the same fix again.
CREATE TABLE reconciliation_fixes (
    fix_key               text        PRIMARY KEY,
    run_key               text        NOT NULL,
    settlement_date       date        NOT NULL,
    item_id               text        NOT NULL,
    kind                  text        NOT NULL,
    transaction_id        text        NOT NULL,
    card_id               text,
    currency              text        NOT NULL,
    issuer_amount_minor   bigint      NOT NULL,
    ledger_amount_minor   bigint      NOT NULL,
    -- issuer - ledger at fix time: what the fix credited issuer:settlement.
    delta_minor           bigint      NOT NULL CHECK (delta_minor <> 0),
    fixed_at              timestamptz NOT NULL DEFAULT now(),
    reversal_key          text,
    -- The correcting transfer's effect on issuer:settlement (signed like delta).
    reversal_minor        bigint,
    ledger_amount_now_minor bigint,
    reversed_by           text,
    reversed_at           timestamptz,
    CHECK ((reversal_key IS NULL) = (reversed_at IS NULL))
);

-- The look-back reads the open fixes of recent days.
CREATE INDEX reconciliation_fixes_open ON reconciliation_fixes (settlement_date)
    WHERE reversal_key IS NULL;
