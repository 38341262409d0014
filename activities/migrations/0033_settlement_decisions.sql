-- Operators' decisions on the settlement ingest's items over the auto-fix
-- threshold (workflows/settlement.py, activities/settlement_decisions.py):
-- who decided, why, and the fix an adjustment posted (keyed from the record
-- id, as an automatic fix would be). A decision is written once: an item no
-- longer awaiting one is never decided again, so a retried decision posts
-- the fix it recorded and nothing else.
ALTER TABLE settlement_operator_items
    ADD COLUMN decided_by  text CHECK (length(decided_by) BETWEEN 1 AND 100),
    ADD COLUMN reason      text CHECK (length(reason) <= 500),
    ADD COLUMN transfer_key text,
    ADD COLUMN decided_at  timestamptz,
    ADD CONSTRAINT settlement_operator_items_decided
        CHECK ((state = 'awaiting_decision') = (decided_by IS NULL)),
    ADD CONSTRAINT settlement_operator_items_adjusted
        CHECK ((state = 'adjusted') = (transfer_key IS NOT NULL));
