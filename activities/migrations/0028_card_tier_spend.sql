-- A customer's KYC tier applied by their cards' authorizations: the tier's
-- limit per purchase and its monthly card spend over all the customer's
-- cards, checked and counted in the same statement as the card's hold.

-- What a customer's cards were approved for in a UTC month, in a currency:
-- an approval counts when its hold is placed (as the card's own counters
-- count it), once per hold key.
CREATE TABLE card_tier_spend (
    customer_id text   NOT NULL,
    currency    text   NOT NULL,
    month       text   NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    spent_minor bigint NOT NULL DEFAULT 0 CHECK (spent_minor >= 0),
    PRIMARY KEY (customer_id, currency, month)
);

-- Every change of a customer's tier, by whom and why (an operator's API key).
CREATE TABLE kyc_tier_changes (
    id          bigserial   PRIMARY KEY,
    customer_id text        NOT NULL REFERENCES customers (customer_id),
    from_tier   text        NOT NULL,
    to_tier     text        NOT NULL,
    reason      text        NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kyc_tier_changes_customer ON kyc_tier_changes (customer_id, id);

-- card_hold_within_tier: a card's hold (ledger_transfer_one, atomic) within
-- its customer's tier. The tier is read from the customer (a customer with
-- no record is 'standard', the column's default); its limits come as three
-- arrays, one element per tier, NULL for none. With p_enforce, a hold whose
-- authorization (p_authorized already approved, plus p_amount) passes the
-- tier's per-purchase limit, or whose month would pass the tier's monthly
-- limit, is refused before the ledger ('over_tier_transaction_limit',
-- 'over_tier_monthly_limit'; nothing written); without it (money the issuer
-- already approved) it is only counted. A hold the ledger accepts counts
-- p_amount against the month once: a key the ledger has seen is its replay,
-- neither checked nor counted again.
--
-- The month's row is locked first, so two cards of one customer asking at
-- once are checked one after the other and never pass the limit together;
-- no other writer takes that lock, so the ledger's lock order is unchanged.
CREATE FUNCTION card_hold_within_tier(
    p_customer        text,
    p_month           text,
    p_enforce         boolean,
    p_authorized      bigint,
    p_tiers           text[],
    p_transaction_max bigint[],
    p_month_max       bigint[],
    p_key             text,
    p_hash            bytea,
    p_debit           text,
    p_credit          text,
    p_amount          bigint,
    p_currency        text,
    p_expires         timestamptz,
    OUT tier          text,
    OUT tier_refusal  text,
    OUT spent_minor   bigint,
    OUT transfer_id   bigint,
    OUT rejection     text,
    OUT detail        text,
    OUT replayed      boolean,
    OUT created_at    timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    i      integer;
    spent  bigint;
    seen   boolean;
    held   record;
BEGIN
    SELECT c.kyc_tier INTO tier FROM customers c WHERE c.customer_id = p_customer;
    tier := coalesce(tier, 'standard');
    i := array_position(p_tiers, tier);

    INSERT INTO card_tier_spend (customer_id, currency, month)
    VALUES (p_customer, p_currency, p_month)
    ON CONFLICT DO NOTHING;
    SELECT s.spent_minor INTO spent FROM card_tier_spend s
     WHERE s.customer_id = p_customer AND s.currency = p_currency AND s.month = p_month
       FOR UPDATE;

    seen := EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.idempotency_key = p_key)
         OR EXISTS (SELECT 1 FROM ledger_rejections r WHERE r.idempotency_key = p_key);
    IF p_enforce AND NOT seen AND i IS NOT NULL AND p_amount > 0 THEN
        IF p_transaction_max[i] IS NOT NULL
           AND p_amount > p_transaction_max[i] - coalesce(p_authorized, 0) THEN
            tier_refusal := 'over_tier_transaction_limit';
            detail := format('the %s tier allows %s per purchase; %s with %s already approved',
                             tier, p_transaction_max[i], p_amount, coalesce(p_authorized, 0));
        ELSIF p_month_max[i] IS NOT NULL AND p_amount > p_month_max[i] - spent THEN
            tier_refusal := 'over_tier_monthly_limit';
            detail := format('the %s tier allows %s a month on cards; %s spent, %s asked',
                             tier, p_month_max[i], spent, p_amount);
        END IF;
        IF tier_refusal IS NOT NULL THEN
            spent_minor := spent;
            replayed := false;
            created_at := clock_timestamp();
            RETURN;
        END IF;
    END IF;

    SELECT * INTO held FROM ledger_transfer_one(true, p_key, p_hash, true, p_debit, p_credit,
                                                p_amount, p_currency, p_expires);
    transfer_id := held.transfer_id;
    rejection := held.rejection;
    detail := held.detail;
    replayed := held.replayed;
    created_at := held.created_at;
    IF held.rejection IS NULL AND NOT held.replayed THEN
        UPDATE card_tier_spend s SET spent_minor = s.spent_minor + p_amount
         WHERE s.customer_id = p_customer AND s.currency = p_currency AND s.month = p_month
        RETURNING s.spent_minor INTO spent;
    END IF;
    spent_minor := spent;
END;
$$;
