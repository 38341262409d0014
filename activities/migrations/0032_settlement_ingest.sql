-- The issuer's daily settlement file, ingested (workflows/settlement.py,
-- activities/settlement_ingest.py): the file, one checkpoint per gzip
-- member, one result per record, and the records over the auto-fix
-- threshold left to operators. Every write is an insert that does nothing
-- when the row is there: a chunk retried, or the same file ingested twice,
-- writes nothing new, and what a record was first classified as stays.

-- One row per file content: a day's file made anew (another sha256) is
-- another row; its records already known keep their first result.
CREATE TABLE settlement_files (
    file_id         bigserial   PRIMARY KEY,
    provider        text        NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    settlement_date date        NOT NULL,
    sha256          text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    record_count    bigint      NOT NULL CHECK (record_count >= 0),
    member_count    integer     NOT NULL CHECK (member_count >= 0),
    byte_size       bigint      NOT NULL CHECK (byte_size >= 0),
    -- How to read it in parts: the manifest less its members, and the members.
    file_ref        jsonb       NOT NULL,
    members         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, settlement_date, sha256)
);

-- A gzip member fully processed: never processed again. The counts are of
-- the member's records by class (their first result, whoever wrote it).
CREATE TABLE settlement_chunks (
    file_id        bigint      NOT NULL REFERENCES settlement_files (file_id),
    member_index   integer     NOT NULL CHECK (member_index >= 0),
    status         text        NOT NULL CHECK (status IN ('done')),
    record_count   integer     NOT NULL CHECK (record_count >= 0),
    -- By class: records and the sum of their deltas; fixed and left to operators.
    counts         jsonb       NOT NULL,
    completed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_id, member_index)
);

-- Each record's result, by the issuer's own record id (unique across days).
-- class: matched, missing_in_ledger, amount_mismatch, unknown (a posting
-- cardflow holds under that transaction in another currency or kind: no
-- delta explains it), reversal (no money), chargeback (the dispute's),
-- fee (the issuer's, posted with the day's fees), interchange (the day's).
-- resolution: none, auto_fix (posted with key fix_key), operator.
CREATE TABLE settlement_records (
    record_id          text        PRIMARY KEY,
    file_id            bigint      NOT NULL REFERENCES settlement_files (file_id),
    member_index       integer     NOT NULL,
    settlement_date    date        NOT NULL,
    record_type        text        NOT NULL,
    class              text        NOT NULL CHECK (class IN ('matched', 'missing_in_ledger',
                           'amount_mismatch', 'unknown', 'reversal', 'chargeback', 'fee',
                           'interchange')),
    transaction_id     text,
    card_id            text,
    currency           text        NOT NULL,
    -- What the issuer settled, signed for issuer:settlement (> 0: cardflow
    -- owes the issuer), what cardflow holds for it, and the difference.
    issuer_amount_minor bigint     NOT NULL,
    ledger_amount_minor bigint     NOT NULL,
    delta_minor        bigint      NOT NULL,
    resolution         text        NOT NULL CHECK (resolution IN ('none', 'auto_fix', 'operator')),
    fix_key            text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((resolution = 'auto_fix') = (fix_key IS NOT NULL))
);
CREATE INDEX settlement_records_day ON settlement_records (settlement_date, class);

-- Differences at or over the currency's auto-fix threshold, for operators.
CREATE TABLE settlement_operator_items (
    record_id       text        PRIMARY KEY REFERENCES settlement_records (record_id),
    provider        text        NOT NULL,
    settlement_date date        NOT NULL,
    class           text        NOT NULL,
    transaction_id  text,
    currency        text        NOT NULL,
    delta_minor     bigint      NOT NULL,
    state           text        NOT NULL DEFAULT 'awaiting_decision'
                    CHECK (state IN ('awaiting_decision', 'adjusted', 'dismissed')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlement_operator_items_day ON settlement_operator_items (provider, settlement_date);
