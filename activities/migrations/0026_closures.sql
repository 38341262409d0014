-- A customer's account: open, being closed (its closure process runs), or
-- closed (every card and wallet closed, the balance paid out).
ALTER TABLE customers ADD COLUMN account_status text NOT NULL DEFAULT 'open'
    CHECK (account_status IN ('open', 'closing', 'closed'));
ALTER TABLE customers ADD COLUMN closed_at timestamptz;
