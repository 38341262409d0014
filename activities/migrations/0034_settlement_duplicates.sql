-- A transaction the issuer settles twice (the same clearing, force post or
-- refund in two records of a day's file, or of two days' files) is charged
-- to the program twice while cardflow posted it once. The first record to
-- claim the transaction is matched as before; every later one is a
-- `duplicate`, never fixed automatically: its whole amount goes to the
-- operators (to dispute with the issuer, or to adjust).
CREATE TABLE settlement_claims (
    transaction_id text        PRIMARY KEY,
    record_id      text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE settlement_records DROP CONSTRAINT settlement_records_class_check;
ALTER TABLE settlement_records ADD CONSTRAINT settlement_records_class_check
    CHECK (class IN ('matched', 'missing_in_ledger', 'amount_mismatch', 'unknown',
        'duplicate', 'reversal', 'chargeback', 'fee', 'interchange'));
