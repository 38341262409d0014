-- A transfer that would carry an account's running totals past a bigint is
-- refused on its own, as 'balance_overflow', like any business rejection:
-- recorded, replayed for its key, and in an independent (coalesced) batch
-- the other transfers go on. Before, the sum itself raised "bigint out of
-- range", which failed the whole call (every transfer coalesced with it) and
-- was retried for ever. The constraint checks are rewritten so that no
-- amount can overflow them: an oversized debit of a wallet is simply
-- 'insufficient_funds'.
--
-- Posted plus pending of each side of a balance row stays within a bigint,
-- so resolving a hold (pending moved to posted) never overflows either.
--
-- Otherwise ledger_submit is as in 0001_ledger.sql (rejection codes 1-9
-- unchanged; 10 and 11 are new).

CREATE OR REPLACE FUNCTION ledger_submit(
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
                     'credits_exceed_debits', 'idempotency_conflict',
                     -- 10 and 11: the debit's side or the credit's side would overflow.
                     'balance_overflow', 'balance_overflow'];
    -- The largest total a balance column holds (bigint).
    total_max    CONSTANT bigint := 9223372036854775807;
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
            -- Each comparison subtracts from what is there instead of adding
            -- the amount to it, so no amount can overflow the check itself.
            -- A constrained account's room is never negative (it is the
            -- constraint), so the subtractions cannot overflow either.
            ELSIF acc_dmnec[di] AND a > b_cp[di] - b_dp[di] - b_dpend[di] THEN
                r_code[i] := 7;
                r_room[i] := b_cp[di] - b_dp[di] - b_dpend[di];
            ELSIF acc_cmned[ci] AND a > b_dp[ci] - b_cp[ci] - b_cpend[ci] THEN
                r_code[i] := 8;
                r_room[i] := b_dp[ci] - b_cp[ci] - b_cpend[ci];
            -- Posted plus pending of each side stays within a bigint, so the
            -- totals after this transfer fit, and so does posting any hold
            -- later (it moves pending to posted). Only this item is refused.
            ELSIF a > total_max - b_dp[di] - b_dpend[di] THEN
                r_code[i] := 10;
                r_room[i] := total_max - b_dp[di] - b_dpend[di];
            ELSIF a > total_max - b_cp[ci] - b_cpend[ci] THEN
                r_code[i] := 11;
                r_room[i] := total_max - b_cp[ci] - b_cpend[ci];
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
                   WHEN 10 THEN format('%s can take %s more in debits, %s requested: its '
                                       'totals would exceed the largest the ledger holds',
                                       it.dcode, it.room, it.amount)
                   WHEN 11 THEN format('%s can take %s more in credits, %s offered: its '
                                       'totals would exceed the largest the ledger holds',
                                       it.ccode, it.room, it.amount)
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


