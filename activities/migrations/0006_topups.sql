-- Top-ups: one row per top-up process that counted against a customer's
-- daily limit. A row is written once (reserved) by an idempotent activity
-- under a per-customer, per-currency, per-day advisory lock, so two top-ups
-- at the same moment cannot both slip under the limit; it becomes credited
-- after the ledger credit, or released when the top-up is reversed.
-- The daily usage is the sum of reserved and credited rows of that UTC day.
CREATE TABLE topup_usage (
    topup_id     text        PRIMARY KEY,
    customer_id  text        NOT NULL,
    currency     text        NOT NULL,
    amount_minor bigint      NOT NULL CHECK (amount_minor > 0),
    -- The UTC day the top-up counts against (the workflow's clock, not the row's).
    day          date        NOT NULL,
    status       text        NOT NULL DEFAULT 'reserved'
                 CHECK (status IN ('reserved', 'credited', 'released')),
    -- An operator approved it over the limit.
    forced       boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX topup_usage_customer_day ON topup_usage (customer_id, currency, day);

-- Reserve a top-up's amount against its customer's day, in one call: under a
-- per-customer, per-currency, per-day advisory lock (held to the end of the
-- calling transaction), count the day's reserved and credited top-ups and
-- insert this one if it fits or is forced. A top-up that already has a row
-- gets that row's status back and nothing changes, so a retry answers as the
-- first call did. Each statement below takes its snapshot after the lock, so
-- it sees every writer that held it before.
CREATE FUNCTION topup_reserve_usage(
    p_topup_id        text,
    p_customer_id     text,
    p_currency        text,
    p_amount_minor    bigint,
    p_day             date,
    p_daily_max_minor bigint,
    p_force           boolean
) RETURNS TABLE (existing text, used_minor bigint, inserted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_existing text;
    v_used     bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(
        'topup-usage/' || p_customer_id || '/' || p_currency || '/' || p_day::text, 0));
    SELECT u.status INTO v_existing FROM topup_usage u WHERE u.topup_id = p_topup_id;
    SELECT coalesce(sum(u.amount_minor), 0) INTO v_used FROM topup_usage u
    WHERE u.customer_id = p_customer_id AND u.currency = p_currency AND u.day = p_day
      AND u.status IN ('reserved', 'credited') AND u.topup_id <> p_topup_id;
    IF v_existing IS NOT NULL THEN
        RETURN QUERY SELECT v_existing, v_used, false;
    ELSIF p_force OR v_used + p_amount_minor <= p_daily_max_minor THEN
        INSERT INTO topup_usage (topup_id, customer_id, currency, amount_minor, day, forced)
        VALUES (p_topup_id, p_customer_id, p_currency, p_amount_minor, p_day,
                v_used + p_amount_minor > p_daily_max_minor);
        RETURN QUERY SELECT NULL::text, v_used, true;
    ELSE
        RETURN QUERY SELECT NULL::text, v_used, false;
    END IF;
END;
$$;
