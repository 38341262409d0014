-- Money paid out of a wallet by a withdrawal (and an account's closure,
-- through its withdrawals) is its own kind of event and feed entry:
-- `withdrawal.paid` when the payout's hold is posted, `withdrawal.returned`
-- when the bank sends it back. Until now they fell to `adjustment`.
ALTER TABLE customer_events DROP CONSTRAINT customer_events_feed_kind_check;
ALTER TABLE customer_events ADD CONSTRAINT customer_events_feed_kind_check
    CHECK (feed_kind IN ('authorization', 'decline', 'reversal', 'clearing', 'refund',
                         'force_post', 'topup', 'fx', 'cashback', 'fee', 'dispute', 'debt',
                         'adjustment', 'withdrawal'));

CREATE OR REPLACE FUNCTION ledger_transfer_customer_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_events (event_id, type, customer_id, feed_kind, posted_minor, currency,
                                 process_id, occurred_at, data)
    SELECT 'evt_' || left(encode(sha256(convert_to('ledger/' || NEW.idempotency_key || '/'
                                                   || m.side, 'UTF8')), 'hex'), 32),
           CASE m.family || (CASE WHEN m.sign > 0 THEN '+' ELSE '-' END)
               WHEN 'topup+' THEN 'topup.credited'
               WHEN 'debt-' THEN 'debt.collected'
               WHEN 'fx+' THEN 'fx.converted'
               WHEN 'fx-' THEN 'fx.converted'
               WHEN 'cashback+' THEN 'cashback.earned'
               WHEN 'cashback-' THEN 'cashback.clawed_back'
               WHEN 'fee+' THEN 'fee.refunded'
               WHEN 'fee-' THEN 'fee.charged'
               WHEN 'dispute+' THEN 'dispute.credited'
               WHEN 'dispute-' THEN 'dispute.debited'
               WHEN 'withdrawal-' THEN 'withdrawal.paid'
               WHEN 'withdrawal+' THEN 'withdrawal.returned'
               ELSE CASE WHEN m.sign > 0 THEN 'adjustment.credited'
                         ELSE 'adjustment.debited' END END,
           m.owner_id,
           -- The feed's kind: the family, but for the two moves no type names.
           CASE WHEN (m.family = 'topup' AND m.sign < 0) OR (m.family = 'debt' AND m.sign > 0)
                THEN 'adjustment' ELSE m.family END,
           m.sign * NEW.amount_minor,
           NEW.currency,
           ledger_key_process(NEW.idempotency_key),
           NEW.created_at,
           jsonb_build_object('amount_minor', NEW.amount_minor,
                              'direction', CASE WHEN m.sign > 0 THEN 'in' ELSE 'out' END,
                              'counterparty', m.counterparty)
    FROM (
        SELECT w.owner_id, w.side, w.sign, w.counterparty,
               -- What it is: by what the wallet paid or was paid by, else by
               -- the process that moved it.
               CASE WHEN w.counterparty LIKE 'revenue:fees:%' THEN 'fee'
                    WHEN w.counterparty LIKE 'expense:cashback:%' THEN 'cashback'
                    WHEN w.counterparty LIKE 'customer:%:debt:%' THEN 'debt'
                    ELSE CASE split_part(NEW.idempotency_key, '/', 1)
                             WHEN 'topup' THEN 'topup' WHEN 'fx' THEN 'fx'
                             WHEN 'cashback' THEN 'cashback' WHEN 'billing' THEN 'fee'
                             WHEN 'card-issue' THEN 'fee' WHEN 'dispute' THEN 'dispute'
                             WHEN 'withdrawal' THEN 'withdrawal'
                             ELSE 'adjustment' END END AS family
        FROM (
            SELECT a.owner_id, 'debit' AS side, -1 AS sign, c.code AS counterparty
            FROM ledger_accounts a, ledger_accounts c
            WHERE a.id = NEW.debit_account_id AND a.kind = 'wallet' AND c.id = NEW.credit_account_id
            UNION ALL
            SELECT a.owner_id, 'credit', 1, c.code
            FROM ledger_accounts a, ledger_accounts c
            WHERE a.id = NEW.credit_account_id AND a.kind = 'wallet' AND c.id = NEW.debit_account_id
        ) w
        WHERE w.owner_id IS NOT NULL
    ) m
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END;
$$;

