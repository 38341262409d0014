-- The double-entry ledger: accounts, striped balances, immutable transfers,
-- recorded rejections, and the functions that are the only writers.
--
-- Every write goes through one function call (one round trip, one commit):
-- ledger_submit (transfers and holds, single or batch), ledger_resolve_hold
-- (post, void, expire) and ledger_close_account. Each locks the balance rows
-- it touches in one ORDER BY (account_id, slot) FOR UPDATE statement, so all
-- writers take locks in the same global order and cannot deadlock, and each
-- checks idempotency and balance constraints after taking those locks.

CREATE TABLE ledger_accounts (
    id                              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                            text        NOT NULL UNIQUE
                                    CHECK (length(code) BETWEEN 1 AND 200),
    currency                        text        NOT NULL CHECK (currency ~ '^[A-Z]{3,4}$'),
    kind                            text        NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    owner_id                        text,
    debits_must_not_exceed_credits  boolean     NOT NULL DEFAULT false,
    credits_must_not_exceed_debits  boolean     NOT NULL DEFAULT false,
    -- Striping: an account that takes part in almost every transfer keeps its
    -- balance in several rows, so concurrent transfers update different rows.
    -- Only unconstrained accounts may stripe: a constraint is checked under
    -- the lock of the account's single row.
    balance_slots                   smallint    NOT NULL DEFAULT 1
                                    CHECK (balance_slots BETWEEN 1 AND 64),
    status                          text        NOT NULL DEFAULT 'open'
                                    CHECK (status IN ('open', 'closed')),
    created_at                      timestamptz NOT NULL DEFAULT clock_timestamp(),
    closed_at                       timestamptz,
    CHECK (NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    CHECK (balance_slots = 1
           OR NOT (debits_must_not_exceed_credits OR credits_must_not_exceed_debits)),
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

CREATE INDEX ledger_accounts_owner ON ledger_accounts (owner_id) WHERE owner_id IS NOT NULL;

CREATE TABLE ledger_balances (
    account_id      bigint   NOT NULL REFERENCES ledger_accounts (id),
    slot            smallint NOT NULL CHECK (slot >= 0),
    debits_posted   bigint   NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint   NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint   NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint   NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    -- Repeated on every slot so a writer that waited for a lock re-reads it.
    closed          boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (account_id, slot)
) WITH (fillfactor = 50);  -- room for HOT updates of these hot rows

-- No foreign keys here: each would lock the referenced account row (a tuple
-- write) on every transfer. Only the functions below insert, using ids they
-- have just read under lock; the verifier checks every reference.
CREATE TABLE ledger_transfers (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key   text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    payload_hash      bytea       NOT NULL,
    kind              text        NOT NULL CHECK (kind IN
                          ('posted', 'pending', 'post_pending', 'void_pending', 'expire_pending')),
    debit_account_id  bigint      NOT NULL,
    debit_slot        smallint    NOT NULL,
    credit_account_id bigint      NOT NULL,
    credit_slot       smallint    NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor > 0),
    currency          text        NOT NULL,
    pending_id        bigint,
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((kind = 'pending') = (expires_at IS NOT NULL)),
    CHECK ((kind IN ('post_pending', 'void_pending', 'expire_pending')) = (pending_id IS NOT NULL))
);

-- A hold is resolved (posted, voided or expired) at most once.
CREATE UNIQUE INDEX ledger_transfers_one_resolution
    ON ledger_transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account_id, id);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account_id, id);
CREATE INDEX ledger_transfers_hold_expiry ON ledger_transfers (expires_at) WHERE kind = 'pending';

CREATE FUNCTION ledger_transfers_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger transfers are immutable (% refused)', TG_OP
        USING ERRCODE = 'CF403';
END;
$$;

CREATE TRIGGER ledger_transfers_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_are_immutable();

-- A business rejection is an outcome too: the same key with the same payload
-- returns it again instead of trying once more.
CREATE TABLE ledger_rejections (
    idempotency_key text        PRIMARY KEY,
    payload_hash    bytea       NOT NULL,
    code            text        NOT NULL,
    detail          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- ---------------------------------------------------------------------------
-- ledger_submit: transfers and holds, one or a batch of up to 8,000.
--
-- p_atomic: all or nothing (a rejection of one item rejects every item);
-- otherwise each item stands alone. Items are checked in order, so within a
-- batch a later item sees the effect of the earlier ones.
-- p_expires holds 'infinity' for plain transfers (arrays here carry no NULLs:
-- reading element i of an array with NULLs or variable-length elements walks
-- the array from its start, which would make a batch quadratic).
-- Errors (SQLSTATE): CF400 malformed call, CF409 idempotency key reused with
-- another payload (atomic only; in an independent batch that item alone
-- reports rejection 'idempotency_conflict', which is not recorded).
-- Business rejections are returned and recorded.
-- ---------------------------------------------------------------------------
CREATE FUNCTION ledger_submit(
    p_atomic     boolean,
    p_keys       text[],
    p_hashes     bytea[],
    p_pending    boolean[],
    p_debits     text[],
    p_credits    text[],
    p_amounts    bigint[],
    p_currencies text[],
    p_expires    timestamptz[]
) RETURNS TABLE (
    item        integer,
    transfer_id bigint,
    rejection   text,
    detail      text,
    replayed    boolean,
    created_at  timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    codes        CONSTANT text[] := ARRAY['invalid_amount', 'same_account', 'unknown_account',
                     'currency_mismatch', 'account_closed', 'invalid_expiry', 'insufficient_funds',
                     'credits_exceed_debits', 'idempotency_conflict'];
    n            integer := coalesce(cardinality(p_keys), 0);
    acc_id       bigint[];
    acc_code     text[];
    acc_currency text[];
    acc_dmnec    boolean[];
    acc_cmned    boolean[];
    acc_slot     smallint[];
    b_dp         bigint[];
    b_cp         bigint[];
    b_dpend      bigint[];
    b_cpend      bigint[];
    b_closed     boolean[];
    d_ix         integer[];
    c_ix         integer[];
    cur_ok       boolean[];
    -- Per item: 0 new, 1 same key and payload seen before, 2 key seen with another payload.
    seen         smallint[];
    -- Per item: 0 undecided, 1 accepted, 2 rejected, 3 replayed.
    st           smallint[] := array_fill(0::smallint, ARRAY[n]);
    r_code       smallint[] := array_fill(0::smallint, ARRAY[n]);
    -- Per item: the balance the rejection was measured against.
    r_room       bigint[] := array_fill(0::bigint, ARRAY[n]);
    distinct_keys integer;
    seen_count   integer;
    ok_count     integer := 0;
    rejected_count integer := 0;
    rejected_at  integer := 0;
    i            integer;
    di           integer;
    ci           integer;
    a            bigint;
    now_ts       timestamptz;
BEGIN
    IF n < 1 OR n > 8000 THEN
        RAISE EXCEPTION 'a submit carries 1 to 8000 transfers, got %', n USING ERRCODE = 'CF400';
    END IF;
    IF cardinality(p_hashes) <> n OR cardinality(p_pending) <> n OR cardinality(p_debits) <> n
       OR cardinality(p_credits) <> n OR cardinality(p_amounts) <> n
       OR cardinality(p_currencies) <> n OR cardinality(p_expires) <> n THEN
        RAISE EXCEPTION 'submit arrays differ in length' USING ERRCODE = 'CF400';
    END IF;

    -- Resolve the accounts and lock one balance row of each, in global order.
    WITH wanted AS (
        SELECT DISTINCT code FROM unnest(p_debits || p_credits) AS code
    ), accounts AS (
        SELECT a.id, a.code, a.currency, a.debits_must_not_exceed_credits AS dmnec,
               a.credits_must_not_exceed_debits AS cmned,
               (pg_backend_pid() % a.balance_slots)::smallint AS slot
        FROM ledger_accounts a JOIN wanted USING (code)
    ), locked AS (
        SELECT b.account_id, b.slot, b.debits_posted, b.credits_posted, b.debits_pending,
               b.credits_pending, b.closed
        FROM ledger_balances b JOIN accounts x ON b.account_id = x.id AND b.slot = x.slot
        ORDER BY b.account_id, b.slot
        FOR UPDATE OF b
    )
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.code ORDER BY x.id),
           array_agg(x.currency ORDER BY x.id), array_agg(x.dmnec ORDER BY x.id),
           array_agg(x.cmned ORDER BY x.id), array_agg(x.slot ORDER BY x.id),
           array_agg(l.debits_posted ORDER BY x.id), array_agg(l.credits_posted ORDER BY x.id),
           array_agg(l.debits_pending ORDER BY x.id), array_agg(l.credits_pending ORDER BY x.id),
           array_agg(l.closed ORDER BY x.id)
      INTO acc_id, acc_code, acc_currency, acc_dmnec, acc_cmned, acc_slot,
           b_dp, b_cp, b_dpend, b_cpend, b_closed
    FROM accounts x JOIN locked l ON l.account_id = x.id;

    -- Per item, in one pass: account positions, currency agreement, and
    -- idempotency. Idempotency is read after the locks: a concurrent call with
    -- the same key has either committed (and is seen here) or waits behind us.
    WITH items AS (
        SELECT * FROM unnest(p_keys, p_hashes, p_debits, p_credits, p_currencies)
                 WITH ORDINALITY AS u(key, hash, dcode, ccode, currency, i)
    ), accounts AS (
        SELECT * FROM unnest(acc_code, acc_currency) WITH ORDINALITY AS x(code, currency, ix)
    ), found AS (
        SELECT t.idempotency_key AS key, t.payload_hash FROM ledger_transfers t
        WHERE t.idempotency_key = ANY (p_keys)
        UNION ALL
        SELECT r.idempotency_key, r.payload_hash FROM ledger_rejections r
        WHERE r.idempotency_key = ANY (p_keys)
    )
    SELECT array_agg(coalesce(dm.ix, 0)::integer ORDER BY it.i),
           array_agg(coalesce(cm.ix, 0)::integer ORDER BY it.i),
           array_agg(coalesce(dm.currency = it.currency AND cm.currency = it.currency, false)
                     ORDER BY it.i),
           array_agg(CASE WHEN f.key IS NULL THEN 0 WHEN f.payload_hash = it.hash THEN 1
                          ELSE 2 END::smallint ORDER BY it.i),
           count(f.key), count(DISTINCT it.key)
      INTO d_ix, c_ix, cur_ok, seen, seen_count, distinct_keys
    FROM items it
    LEFT JOIN accounts dm ON dm.code = it.dcode
    LEFT JOIN accounts cm ON cm.code = it.ccode
    LEFT JOIN found f ON f.key = it.key;

    IF distinct_keys <> n THEN
        RAISE EXCEPTION 'an idempotency key appears twice in one submit' USING ERRCODE = 'CF400';
    END IF;
    IF seen_count > 0 AND p_atomic THEN
        FOR i IN 1 .. n LOOP
            IF seen[i] = 2 THEN
                RAISE EXCEPTION 'idempotency key "%" was already used with a different payload',
                    p_keys[i] USING ERRCODE = 'CF409';
            END IF;
        END LOOP;
        IF seen_count < n THEN
            FOR i IN 1 .. n LOOP
                IF seen[i] = 1 THEN
                    RAISE EXCEPTION 'idempotency key "%" was already used outside this atomic batch',
                        p_keys[i] USING ERRCODE = 'CF409';
                END IF;
            END LOOP;
        END IF;
    END IF;

    now_ts := clock_timestamp();
    FOR i IN 1 .. n LOOP
        IF seen[i] = 1 THEN
            st[i] := 3;
            CONTINUE;
        ELSIF seen[i] = 2 THEN
            r_code[i] := 9;
        ELSE
            di := d_ix[i];
            ci := c_ix[i];
            a := p_amounts[i];
            IF a IS NULL OR a <= 0 THEN
                r_code[i] := 1;
            ELSIF di = ci AND di > 0 THEN
                r_code[i] := 2;
            ELSIF di = 0 OR ci = 0 THEN
                r_code[i] := 3;
            ELSIF NOT cur_ok[i] THEN
                r_code[i] := 4;
            ELSIF b_closed[di] OR b_closed[ci] THEN
                r_code[i] := 5;
            ELSIF p_pending[i] AND p_expires[i] <= now_ts THEN
                r_code[i] := 6;
            ELSIF acc_dmnec[di] AND b_dp[di] + b_dpend[di] + a > b_cp[di] THEN
                r_code[i] := 7;
                r_room[i] := b_cp[di] - b_dp[di] - b_dpend[di];
            ELSIF acc_cmned[ci] AND b_cp[ci] + b_cpend[ci] + a > b_dp[ci] THEN
                r_code[i] := 8;
                r_room[i] := b_dp[ci] - b_cp[ci] - b_cpend[ci];
            ELSE
                IF p_pending[i] THEN
                    b_dpend[di] := b_dpend[di] + a;
                    b_cpend[ci] := b_cpend[ci] + a;
                ELSE
                    b_dp[di] := b_dp[di] + a;
                    b_cp[ci] := b_cp[ci] + a;
                END IF;
                st[i] := 1;
                ok_count := ok_count + 1;
                CONTINUE;
            END IF;
        END IF;
        st[i] := 2;
        rejected_count := rejected_count + 1;
        IF p_atomic THEN
            rejected_at := i;
            EXIT;
        END IF;
    END LOOP;

    IF rejected_at > 0 THEN
        -- All or nothing: every item of the batch carries the one reason.
        st := array_fill(2::smallint, ARRAY[n]);
        ok_count := 0;
        rejected_count := n;
    END IF;

    IF ok_count > 0 THEN
        UPDATE ledger_balances b
           SET debits_posted = v.dp, credits_posted = v.cp,
               debits_pending = v.dpend, credits_pending = v.cpend
          FROM unnest(acc_id, acc_slot, b_dp, b_cp, b_dpend, b_cpend)
               AS v(id, slot, dp, cp, dpend, cpend)
         WHERE b.account_id = v.id AND b.slot = v.slot
           AND (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)
               IS DISTINCT FROM (v.dp, v.cp, v.dpend, v.cpend);
    END IF;

    RETURN QUERY
    WITH items AS (
        SELECT * FROM unnest(p_keys, p_hashes, p_pending, p_debits, p_credits, p_amounts,
                             p_currencies, p_expires, st, r_code, r_room, d_ix, c_ix)
                 WITH ORDINALITY
                 AS u(key, hash, pending, dcode, ccode, amount, currency, expires, state, code,
                      room, di, ci, i)
    ), failed AS (
        -- The reason, in words, of each rejected item (in an atomic batch, of
        -- the one item that failed it).
        SELECT it.i,
               CASE it.code
                   WHEN 1 THEN format('amount must be positive, got %s', it.amount)
                   WHEN 2 THEN format('%s cannot pay itself', it.dcode)
                   WHEN 3 THEN format('no account %s',
                                      CASE WHEN it.di = 0 THEN it.dcode ELSE it.ccode END)
                   WHEN 4 THEN format('%s %s to %s %s in %s', it.dcode, acc_currency[it.di],
                                      it.ccode, acc_currency[it.ci], it.currency)
                   WHEN 5 THEN format('%s is closed',
                                      CASE WHEN b_closed[it.di] THEN it.dcode ELSE it.ccode END)
                   WHEN 6 THEN format('a hold must expire in the future, got %s', it.expires)
                   WHEN 7 THEN format('%s has %s available, %s requested', it.dcode, it.room,
                                      it.amount)
                   WHEN 8 THEN format('%s may take %s more, %s offered', it.ccode, it.room,
                                      it.amount)
                   WHEN 9 THEN format('idempotency key "%s" was already used with a different '
                                      'payload', it.key)
               END AS why
        FROM items it WHERE it.code > 0
    ), reasons AS (
        SELECT it.i, it.key, it.hash,
               codes[CASE WHEN rejected_at > 0 THEN r_code[rejected_at] ELSE it.code END] AS code,
               CASE WHEN rejected_at = 0 OR n = 1 THEN f.why
                    ELSE format('batch rejected at item %s (%s): %s', rejected_at,
                                p_keys[rejected_at], (SELECT f2.why FROM failed f2
                                                      WHERE f2.i = rejected_at)) END AS why
        FROM items it LEFT JOIN failed f ON f.i = it.i
        WHERE rejected_count > 0 AND it.state = 2
    ), recorded AS (
        -- A conflicting key is refused, not recorded: it has an outcome already.
        INSERT INTO ledger_rejections (idempotency_key, payload_hash, code, detail, created_at)
        SELECT r.key, r.hash, r.code, r.why, now_ts FROM reasons r
        WHERE r.code <> 'idempotency_conflict'
    ), inserted AS (
        INSERT INTO ledger_transfers (idempotency_key, payload_hash, kind, debit_account_id,
                                      debit_slot, credit_account_id, credit_slot, amount_minor,
                                      currency, expires_at)
        SELECT it.key, it.hash, CASE WHEN it.pending THEN 'pending' ELSE 'posted' END,
               acc_id[it.di], acc_slot[it.di], acc_id[it.ci], acc_slot[it.ci], it.amount,
               it.currency, CASE WHEN it.pending THEN it.expires END
        FROM items it
        WHERE ok_count > 0 AND it.state = 1
        ORDER BY it.i
        RETURNING ledger_transfers.idempotency_key, ledger_transfers.id,
                  ledger_transfers.created_at
    ), earlier AS (
        SELECT t.idempotency_key AS key, t.id, NULL::text AS code, ''::text AS why, t.created_at
        FROM ledger_transfers t
        WHERE seen_count > 0 AND t.idempotency_key = ANY (p_keys)
        UNION ALL
        SELECT r.idempotency_key, NULL, r.code, r.detail, r.created_at
        FROM ledger_rejections r
        WHERE seen_count > 0 AND r.idempotency_key = ANY (p_keys)
    )
    SELECT it.i::integer,
           CASE WHEN it.state = 3 THEN e.id ELSE ins.id END,
           CASE WHEN it.state = 3 THEN e.code ELSE r.code END,
           coalesce(CASE WHEN it.state = 3 THEN e.why ELSE r.why END, ''),
           it.state = 3,
           coalesce(CASE WHEN it.state = 3 THEN e.created_at ELSE ins.created_at END, now_ts)
    FROM items it
    LEFT JOIN inserted ins ON ins.idempotency_key = it.key
    LEFT JOIN reasons r ON r.i = it.i
    LEFT JOIN earlier e ON e.key = it.key AND it.state = 3
    ORDER BY it.i;
END;
$$;

-- ---------------------------------------------------------------------------
-- ledger_resolve_hold: post (all or part; the rest is released), void, or
-- expire a hold named by its idempotency key. A hold is resolved once; it is
-- never posted after its expiry and never expired before it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION ledger_resolve_hold(
    p_key      text,
    p_hash     bytea,
    p_action   text,
    p_hold_key text,
    p_amount   bigint
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
    hold     ledger_transfers%ROWTYPE;
    resolved ledger_transfers%ROWTYPE;
    prior    record;
    now_ts   timestamptz;
    amount   bigint;
    code     text;
    why      text;
    new_id   bigint;
    new_at   timestamptz;
BEGIN
    IF p_action NOT IN ('post', 'void', 'expire') THEN
        RAISE EXCEPTION 'action must be post, void or expire, got %', p_action
            USING ERRCODE = 'CF400';
    END IF;

    SELECT * INTO hold FROM ledger_transfers t WHERE t.idempotency_key = p_hold_key;
    IF FOUND AND hold.kind = 'pending' THEN
        PERFORM 1 FROM ledger_balances b
        WHERE (b.account_id, b.slot) IN ((hold.debit_account_id, hold.debit_slot),
                                         (hold.credit_account_id, hold.credit_slot))
        ORDER BY b.account_id, b.slot
        FOR UPDATE;
    END IF;

    SELECT x.payload_hash, x.id, x.code, x.detail, x.created_at, x.amount_minor INTO prior
    FROM (
        SELECT t.payload_hash, t.id, NULL::text AS code, ''::text AS detail, t.created_at,
               t.amount_minor
        FROM ledger_transfers t WHERE t.idempotency_key = p_key
        UNION ALL
        SELECT r.payload_hash, NULL, r.code, r.detail, r.created_at, NULL
        FROM ledger_rejections r WHERE r.idempotency_key = p_key
    ) x;
    IF FOUND THEN
        IF prior.payload_hash <> p_hash THEN
            RAISE EXCEPTION 'idempotency key "%" was already used with a different payload',
                p_key USING ERRCODE = 'CF409';
        END IF;
        RETURN QUERY SELECT prior.id, prior.code, prior.detail, true, prior.created_at,
                            prior.amount_minor;
        RETURN;
    END IF;

    now_ts := clock_timestamp();
    IF hold.id IS NULL OR hold.kind <> 'pending' THEN
        code := 'hold_not_found';
        why := format('no hold with key %s', p_hold_key);
    ELSE
        SELECT * INTO resolved FROM ledger_transfers t WHERE t.pending_id = hold.id;
        IF FOUND THEN
            code := 'hold_already_resolved';
            why := format('hold %s was already resolved (%s, key %s)', p_hold_key,
                          resolved.kind, resolved.idempotency_key);
        ELSIF p_action = 'post' AND now_ts > hold.expires_at THEN
            code := 'hold_expired';
            why := format('hold %s expired at %s', p_hold_key, hold.expires_at);
        ELSIF p_action = 'expire' AND now_ts <= hold.expires_at THEN
            code := 'hold_not_expired';
            why := format('hold %s expires at %s', p_hold_key, hold.expires_at);
        ELSIF p_action = 'post' AND p_amount IS NOT NULL
              AND (p_amount <= 0 OR p_amount > hold.amount_minor) THEN
            code := 'invalid_amount';
            why := format('post amount must be 1 to %s, got %s', hold.amount_minor, p_amount);
        END IF;
    END IF;

    IF code IS NOT NULL THEN
        INSERT INTO ledger_rejections (idempotency_key, payload_hash, code, detail)
        VALUES (p_key, p_hash, code, why)
        RETURNING ledger_rejections.created_at INTO new_at;
        RETURN QUERY SELECT NULL::bigint, code, why, false, new_at, NULL::bigint;
        RETURN;
    END IF;

    amount := CASE WHEN p_action = 'post' THEN coalesce(p_amount, hold.amount_minor)
                   ELSE hold.amount_minor END;
    UPDATE ledger_balances b
       SET debits_pending = b.debits_pending - hold.amount_minor,
           debits_posted = b.debits_posted + CASE WHEN p_action = 'post' THEN amount ELSE 0 END
     WHERE b.account_id = hold.debit_account_id AND b.slot = hold.debit_slot;
    UPDATE ledger_balances b
       SET credits_pending = b.credits_pending - hold.amount_minor,
           credits_posted = b.credits_posted + CASE WHEN p_action = 'post' THEN amount ELSE 0 END
     WHERE b.account_id = hold.credit_account_id AND b.slot = hold.credit_slot;
    INSERT INTO ledger_transfers (idempotency_key, payload_hash, kind, debit_account_id,
                                  debit_slot, credit_account_id, credit_slot, amount_minor,
                                  currency, pending_id)
    VALUES (p_key, p_hash, p_action || '_pending', hold.debit_account_id, hold.debit_slot,
            hold.credit_account_id, hold.credit_slot, amount, hold.currency, hold.id)
    RETURNING ledger_transfers.id, ledger_transfers.created_at INTO new_id, new_at;
    RETURN QUERY SELECT new_id, NULL::text, ''::text, false, new_at, amount;
END;
$$;

-- ---------------------------------------------------------------------------
-- ledger_close_account: only at a zero balance with no open holds.
-- Returns 'closed' or 'already_closed'; CF422 when the account is not empty.
-- ---------------------------------------------------------------------------
CREATE FUNCTION ledger_close_account(p_code text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    account ledger_accounts%ROWTYPE;
    totals  record;
BEGIN
    SELECT * INTO account FROM ledger_accounts WHERE code = p_code;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account %', p_code USING ERRCODE = 'CF404';
    END IF;
    SELECT sum(debits_posted) AS dp, sum(credits_posted) AS cp,
           sum(debits_pending) AS dpend, sum(credits_pending) AS cpend, bool_and(closed) AS closed
      INTO totals
    FROM (SELECT * FROM ledger_balances WHERE account_id = account.id
          ORDER BY slot FOR UPDATE) AS locked;
    IF totals.closed THEN
        RETURN 'already_closed';
    END IF;
    IF totals.dpend <> 0 OR totals.cpend <> 0 THEN
        RAISE EXCEPTION 'account % has open holds (% debit, % credit pending)',
            p_code, totals.dpend, totals.cpend USING ERRCODE = 'CF422';
    END IF;
    IF totals.dp <> totals.cp THEN
        RAISE EXCEPTION 'account % has a balance of % (credits minus debits)',
            p_code, totals.cp - totals.dp USING ERRCODE = 'CF422';
    END IF;
    UPDATE ledger_balances SET closed = true WHERE account_id = account.id;
    UPDATE ledger_accounts SET status = 'closed', closed_at = clock_timestamp()
     WHERE id = account.id;
    RETURN 'closed';
END;
$$;
