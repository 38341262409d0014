-- Ledger accounts: one currency each, a readable code, a kind and the
-- constraint flags of DESIGN.md. Transfers and holds build on this table.
CREATE TABLE ledger_accounts (
    id                              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                            text        NOT NULL UNIQUE,
    currency                        text        NOT NULL CHECK (currency ~ '^[A-Z]{3,4}$'),
    kind                            text        NOT NULL,
    owner_id                        text,
    debits_must_not_exceed_credits  boolean     NOT NULL DEFAULT false,
    credits_must_not_exceed_debits  boolean     NOT NULL DEFAULT false,
    status                          text        NOT NULL DEFAULT 'open'
                                    CHECK (status IN ('open', 'closed')),
    created_at                      timestamptz NOT NULL DEFAULT now(),
    closed_at                       timestamptz,
    -- An account may carry at most one of the two balance constraints.
    CHECK (NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

CREATE INDEX ledger_accounts_owner_idx ON ledger_accounts (owner_id) WHERE owner_id IS NOT NULL;
