-- Partial resolution of a hold that stays partly pending: a card
-- authorization cleared for less than it holds while the merchant may still
-- present the rest, or reversed in part. TigerBeetle-style posting releases
-- whatever is not posted; here the rest is held again, in the same
-- transaction and under the same locks, as a new hold with the same expiry
-- (key p_rest_key), so no other transfer can take those funds in between.
CREATE FUNCTION ledger_resolve_hold_partial(
    p_key      text,
    p_hash     bytea,
    p_action   text,
    p_hold_key text,
    p_amount   bigint,
    p_rest_key text
) RETURNS TABLE (
    transfer_id  bigint,
    rejection    text,
    detail       text,
    replayed     boolean,
    created_at   timestamptz,
    amount_minor bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    hold    ledger_transfers%ROWTYPE;
    outcome record;
    rest    bigint;
    why     text;
    new_at  timestamptz;
BEGIN
    IF p_action NOT IN ('post', 'void') OR p_amount IS NULL OR p_amount <= 0
       OR p_rest_key IS NULL OR p_rest_key = p_key THEN
        RAISE EXCEPTION 'a partial resolution posts or voids a positive amount and names '
                        'a distinct key for the rest' USING ERRCODE = 'CF400';
    END IF;

    SELECT * INTO hold FROM ledger_transfers t WHERE t.idempotency_key = p_hold_key;
    IF FOUND AND hold.kind = 'pending' THEN
        PERFORM 1 FROM ledger_balances b
        WHERE (b.account_id, b.slot) IN ((hold.debit_account_id, hold.debit_slot),
                                         (hold.credit_account_id, hold.credit_slot))
        ORDER BY b.account_id, b.slot
        FOR UPDATE;
        -- Voiding more than is held is refused like posting more (recorded),
        -- unless this key already has its outcome.
        IF p_action = 'void' AND p_amount > hold.amount_minor
           AND NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.idempotency_key = p_key)
           AND NOT EXISTS (SELECT 1 FROM ledger_rejections r WHERE r.idempotency_key = p_key)
        THEN
            why := format('void amount must be 1 to %s, got %s', hold.amount_minor, p_amount);
            INSERT INTO ledger_rejections (idempotency_key, payload_hash, code, detail)
            VALUES (p_key, p_hash, 'invalid_amount', why)
            RETURNING ledger_rejections.created_at INTO new_at;
            RETURN QUERY SELECT NULL::bigint, 'invalid_amount'::text, why, false, new_at,
                                NULL::bigint;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO outcome
    FROM ledger_resolve_hold(p_key, p_hash, p_action, p_hold_key,
                             CASE WHEN p_action = 'post' THEN p_amount END);
    IF outcome.rejection IS NULL AND NOT outcome.replayed THEN
        rest := hold.amount_minor - p_amount;
        IF rest > 0 THEN
            UPDATE ledger_balances b SET debits_pending = b.debits_pending + rest
             WHERE b.account_id = hold.debit_account_id AND b.slot = hold.debit_slot;
            UPDATE ledger_balances b SET credits_pending = b.credits_pending + rest
             WHERE b.account_id = hold.credit_account_id AND b.slot = hold.credit_slot;
            INSERT INTO ledger_transfers (idempotency_key, payload_hash, kind, debit_account_id,
                                          debit_slot, credit_account_id, credit_slot,
                                          amount_minor, currency, expires_at)
            VALUES (p_rest_key, sha256(convert_to('rest of ' || p_key, 'UTF8')), 'pending',
                    hold.debit_account_id, hold.debit_slot, hold.credit_account_id,
                    hold.credit_slot, rest, hold.currency, hold.expires_at);
        END IF;
    END IF;
    RETURN QUERY SELECT outcome.transfer_id, outcome.rejection, outcome.detail,
                        outcome.replayed, outcome.created_at,
                        CASE WHEN p_action = 'void' AND outcome.rejection IS NULL
                             THEN p_amount ELSE outcome.amount_minor END;
END;
$$;
