-- ledger_transfer_one: one transfer or hold, the call a lone caller makes.
--
-- ledger_submit serves batches of up to 8,000 with arrays, unnest and
-- aggregates; for a single item that machinery, not the bookkeeping, is most
-- of the call's cost. This function takes the one item as scalars and runs a
-- few simple statements, each a plan PostgreSQL caches after its first calls.
--
-- It behaves exactly as ledger_submit(p_atomic, ARRAY[one item]) of
-- 0014_ledger_overflow.sql: the same locks in the same order (the balance row
-- of each account at slot pg_backend_pid() % balance_slots, in account id
-- order, before idempotency is read), the same replay of a key's first
-- outcome, the same CF409 for a key reused with another payload (atomic) or
-- unrecorded 'idempotency_conflict' rejection (independent), the same
-- rejection codes, details and checks in the same order, and the same rows
-- written. The one row it returns has ledger_submit's columns, item = 1.
-- A change to the rules of one function is a change to both: tests drive
-- the two side by side and compare every outcome and balance.

CREATE FUNCTION ledger_transfer_one(
    p_atomic   boolean,
    p_key      text,
    p_hash     bytea,
    p_pending  boolean,
    p_debit    text,
    p_credit   text,
    p_amount   bigint,
    p_currency text,
    p_expires  timestamptz,
    OUT item        integer,
    OUT transfer_id bigint,
    OUT rejection   text,
    OUT detail      text,
    OUT replayed    boolean,
    OUT created_at  timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    -- The largest total a balance column holds (bigint).
    total_max  CONSTANT bigint := 9223372036854775807;
    -- The debit account (d_) and the credit account (c_); an id of NULL is
    -- an account that does not exist (or has no balance row at its slot).
    d_id       bigint;
    d_currency text;
    d_dmnec    boolean;
    d_cmned    boolean;
    d_slots    smallint;
    d_slot     smallint;
    d_dp       bigint;
    d_cp       bigint;
    d_dpend    bigint;
    d_cpend    bigint;
    d_closed   boolean;
    c_id       bigint;
    c_currency text;
    c_cmned    boolean;
    c_slots    smallint;
    c_slot     smallint;
    c_dp       bigint;
    c_cp       bigint;
    c_dpend    bigint;
    c_cpend    bigint;
    c_closed   boolean;
    first_id   bigint;
    second_id  bigint;
    seen       boolean;
    prior_hash bytea;
    -- The rejection, if any, and its reason in words.
    refusal    text;
    why        text;
    room       bigint;
    a          bigint := p_amount;
    now_ts     timestamptz;
BEGIN
    IF p_key IS NULL THEN
        RAISE EXCEPTION 'a transfer needs an idempotency key' USING ERRCODE = 'CF400';
    END IF;
    item := 1;

    -- Account attributes never change once opened (closing is recorded on
    -- the balance rows), so they are read before the locks.
    SELECT x.id, x.currency, x.debits_must_not_exceed_credits,
           x.credits_must_not_exceed_debits, x.balance_slots
      INTO d_id, d_currency, d_dmnec, d_cmned, d_slots
      FROM ledger_accounts x WHERE x.code = p_debit;
    IF p_credit = p_debit THEN
        c_id := d_id;
        c_currency := d_currency;
        c_cmned := d_cmned;
        c_slots := d_slots;
    ELSE
        SELECT x.id, x.currency, x.credits_must_not_exceed_debits, x.balance_slots
          INTO c_id, c_currency, c_cmned, c_slots
          FROM ledger_accounts x WHERE x.code = p_credit;
    END IF;
    d_slot := (pg_backend_pid() % d_slots)::smallint;
    c_slot := (pg_backend_pid() % c_slots)::smallint;

    -- Lock one balance row of each account in account id order, the order
    -- every ledger writer takes its locks in, so none of them can deadlock.
    IF d_id IS NOT NULL AND c_id IS NOT NULL THEN
        first_id := least(d_id, c_id);
        second_id := greatest(d_id, c_id);
    ELSE
        first_id := coalesce(d_id, c_id);
    END IF;
    IF first_id = d_id THEN
        SELECT b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.closed
          INTO d_dp, d_cp, d_dpend, d_cpend, d_closed
          FROM ledger_balances b WHERE b.account_id = d_id AND b.slot = d_slot
           FOR UPDATE;
    ELSIF first_id = c_id THEN
        SELECT b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.closed
          INTO c_dp, c_cp, c_dpend, c_cpend, c_closed
          FROM ledger_balances b WHERE b.account_id = c_id AND b.slot = c_slot
           FOR UPDATE;
    END IF;
    IF second_id = d_id AND second_id <> first_id THEN
        SELECT b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.closed
          INTO d_dp, d_cp, d_dpend, d_cpend, d_closed
          FROM ledger_balances b WHERE b.account_id = d_id AND b.slot = d_slot
           FOR UPDATE;
    ELSIF second_id = c_id AND second_id <> first_id THEN
        SELECT b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending, b.closed
          INTO c_dp, c_cp, c_dpend, c_cpend, c_closed
          FROM ledger_balances b WHERE b.account_id = c_id AND b.slot = c_slot
           FOR UPDATE;
    END IF;
    IF c_id = d_id THEN
        c_dp := d_dp;
        c_cp := d_cp;
        c_dpend := d_dpend;
        c_cpend := d_cpend;
        c_closed := d_closed;
    END IF;
    -- An account without a balance row at its slot is unknown, as in
    -- ledger_submit, which joins the two.
    IF d_closed IS NULL THEN
        d_id := NULL;
    END IF;
    IF c_closed IS NULL THEN
        c_id := NULL;
    END IF;

    -- Idempotency is read after the locks: a concurrent call with the same
    -- key has either committed (and is seen here) or waits behind us.
    SELECT t.payload_hash, t.id, t.created_at INTO prior_hash, transfer_id, created_at
      FROM ledger_transfers t WHERE t.idempotency_key = p_key;
    seen := FOUND;
    IF seen THEN
        rejection := NULL;
        detail := '';
    ELSE
        SELECT r.payload_hash, r.code, r.detail, r.created_at
          INTO prior_hash, rejection, detail, created_at
          FROM ledger_rejections r WHERE r.idempotency_key = p_key;
        seen := FOUND;
    END IF;
    IF seen THEN
        IF prior_hash = p_hash THEN
            replayed := true;
            RETURN;
        END IF;
        IF p_atomic THEN
            RAISE EXCEPTION 'idempotency key "%" was already used with a different payload',
                p_key USING ERRCODE = 'CF409';
        END IF;
        -- Independent: this item alone is refused, and not recorded (the key
        -- has its outcome already).
        transfer_id := NULL;
        rejection := 'idempotency_conflict';
        detail := format('idempotency key "%s" was already used with a different payload',
                         p_key);
        replayed := false;
        created_at := clock_timestamp();
        RETURN;
    END IF;
    replayed := false;

    now_ts := clock_timestamp();
    IF a IS NULL OR a <= 0 THEN
        refusal := 'invalid_amount';
        why := format('amount must be positive, got %s', a);
    ELSIF c_id = d_id THEN
        refusal := 'same_account';
        why := format('%s cannot pay itself', p_debit);
    ELSIF d_id IS NULL OR c_id IS NULL THEN
        refusal := 'unknown_account';
        why := format('no account %s', CASE WHEN d_id IS NULL THEN p_debit ELSE p_credit END);
    ELSIF NOT coalesce(d_currency = p_currency AND c_currency = p_currency, false) THEN
        refusal := 'currency_mismatch';
        why := format('%s %s to %s %s in %s', p_debit, d_currency, p_credit, c_currency,
                      p_currency);
    ELSIF d_closed OR c_closed THEN
        refusal := 'account_closed';
        why := format('%s is closed', CASE WHEN d_closed THEN p_debit ELSE p_credit END);
    ELSIF p_pending AND p_expires <= now_ts THEN
        refusal := 'invalid_expiry';
        why := format('a hold must expire in the future, got %s', p_expires);
    -- Each comparison subtracts from what is there instead of adding the
    -- amount to it, so no amount can overflow the check itself (see
    -- 0014_ledger_overflow.sql).
    ELSIF d_dmnec AND a > d_cp - d_dp - d_dpend THEN
        refusal := 'insufficient_funds';
        room := d_cp - d_dp - d_dpend;
        why := format('%s has %s available, %s requested', p_debit, room, a);
    ELSIF c_cmned AND a > c_dp - c_cp - c_cpend THEN
        refusal := 'credits_exceed_debits';
        room := c_dp - c_cp - c_cpend;
        why := format('%s may take %s more, %s offered', p_credit, room, a);
    ELSIF a > total_max - d_dp - d_dpend THEN
        refusal := 'balance_overflow';
        room := total_max - d_dp - d_dpend;
        why := format('%s can take %s more in debits, %s requested: its totals would exceed '
                      'the largest the ledger holds', p_debit, room, a);
    ELSIF a > total_max - c_cp - c_cpend THEN
        refusal := 'balance_overflow';
        room := total_max - c_cp - c_cpend;
        why := format('%s can take %s more in credits, %s offered: its totals would exceed '
                      'the largest the ledger holds', p_credit, room, a);
    END IF;

    IF refusal IS NOT NULL THEN
        INSERT INTO ledger_rejections (idempotency_key, payload_hash, code, detail, created_at)
        VALUES (p_key, p_hash, refusal, why, now_ts);
        transfer_id := NULL;
        rejection := refusal;
        detail := why;
        created_at := now_ts;
        RETURN;
    END IF;

    -- One UPDATE for both rows: each statement execution prepares the
    -- table's CHECK constraints afresh, so one costs less than two.
    IF p_pending THEN
        d_dpend := d_dpend + a;
        c_cpend := c_cpend + a;
    ELSE
        d_dp := d_dp + a;
        c_cp := c_cp + a;
    END IF;
    UPDATE ledger_balances b
       SET debits_posted = CASE WHEN b.account_id = d_id THEN d_dp ELSE b.debits_posted END,
           debits_pending = CASE WHEN b.account_id = d_id THEN d_dpend ELSE b.debits_pending END,
           credits_posted = CASE WHEN b.account_id = c_id THEN c_cp ELSE b.credits_posted END,
           credits_pending = CASE WHEN b.account_id = c_id THEN c_cpend ELSE b.credits_pending END
     WHERE b.account_id IN (d_id, c_id)
       AND b.slot = CASE WHEN b.account_id = d_id THEN d_slot ELSE c_slot END;

    INSERT INTO ledger_transfers AS t (idempotency_key, payload_hash, kind, debit_account_id,
                                       debit_slot, credit_account_id, credit_slot,
                                       amount_minor, currency, expires_at)
    VALUES (p_key, p_hash, CASE WHEN p_pending THEN 'pending' ELSE 'posted' END, d_id, d_slot,
            c_id, c_slot, a, p_currency, CASE WHEN p_pending THEN p_expires END)
    RETURNING t.id, t.created_at INTO transfer_id, created_at;
    rejection := NULL;
    detail := '';
END;
$$;
