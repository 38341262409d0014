-- Customer events: what happened to a customer's money and cards, each
-- written once with an id, in the same transaction as the state change it
-- reports. They are the customer's transaction feed (rows with a feed_kind),
-- the /v1/events stream, and what webhook endpoints are sent.
--
-- Who writes them:
-- - money the ledger moves in or out of a customer's wallet for a process
--   other than a card (top-ups, FX, cashback, fees, disputes, debt): the
--   trigger on ledger_transfers below, in the ledger's own transaction;
-- - a card's settled transactions (clearings, refunds, force posts): the
--   trigger on card_transactions, in the transaction that records them;
-- - the issuer's word on authorizations, cards and disputes: the gateway,
--   in the transaction that remembers the issuer's webhook;
-- - processes whose state is not in the database: the process, by activity.
--
-- Order without gaps: a row is written without a position (seq NULL) and
-- customer_events_sequence() gives positions to every committed row that has
-- none, in one transaction under one lock, above every position given
-- before. So a reader paging by seq never sees a row appear behind a
-- position it has already passed, however the writers' commits interleave.

CREATE TABLE customer_events (
    event_id         text        PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 100),
    seq              bigint      UNIQUE,
    type             text        NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$'),
    customer_id      text        NOT NULL,
    card_id          text,
    authorization_id text,
    -- The entry it makes in the customer's feed, if any.
    feed_kind        text        CHECK (feed_kind IN ('authorization', 'decline', 'reversal',
                         'clearing', 'refund', 'force_post', 'topup', 'fx', 'cashback', 'fee',
                         'dispute', 'debt', 'adjustment')),
    -- The wallet's posted balance moves by this much (credits positive).
    posted_minor     bigint,
    currency         text        CHECK (currency ~ '^[A-Z]{3,4}$'),
    process_id       text,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    data             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((posted_minor IS NULL) OR (currency IS NOT NULL))
);
CREATE INDEX customer_events_unsequenced ON customer_events (recorded_at) WHERE seq IS NULL;
CREATE INDEX customer_events_feed ON customer_events (customer_id, seq)
    WHERE feed_kind IS NOT NULL AND seq IS NOT NULL;
CREATE INDEX customer_events_authorization ON customer_events (authorization_id, occurred_at)
    WHERE authorization_id IS NOT NULL;

-- Positions for every committed event without one; returns how many were
-- given. Never waits: when another caller is giving positions, this one
-- gives none (that caller's commit makes them visible).
CREATE FUNCTION customer_events_sequence(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_top   bigint;
    v_count integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('customer_events_sequence', 0)) THEN
        RETURN 0;
    END IF;
    SELECT coalesce(max(seq), 0) INTO v_top FROM customer_events;
    WITH todo AS (
        SELECT event_id, row_number() OVER (ORDER BY recorded_at, event_id) AS n
        FROM customer_events
        WHERE seq IS NULL
        ORDER BY recorded_at, event_id
        LIMIT p_limit
    )
    UPDATE customer_events e SET seq = v_top + todo.n
    FROM todo WHERE e.event_id = todo.event_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- The process a ledger key belongs to: keys are {workflow id}/{step}, and
-- these workflow ids have three parts, the others two.
CREATE FUNCTION ledger_key_process(p_key text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_to_string((string_to_array(p_key, '/'))[1:(
        CASE split_part(p_key, '/', 1) WHEN 'topup' THEN 3 WHEN 'billing' THEN 3 ELSE 2 END)], '/')
$$;

-- Row triggers whose WHEN leaves out a card's own transfers (holds, their
-- postings and releases, the hot path), so those pay nothing here.
CREATE FUNCTION ledger_transfer_customer_events() RETURNS trigger
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

-- A card's own money is reported by what it settles (card_transactions) and
-- by the issuer; an operator's charge on a card is an adjustment.
CREATE TRIGGER ledger_transfers_customer_events
    AFTER INSERT ON ledger_transfers
    FOR EACH ROW
    WHEN (NEW.kind IN ('posted', 'post_pending')
          AND (NEW.idempotency_key NOT LIKE 'card/%'
               OR NEW.idempotency_key LIKE 'card/%/exception/%'))
    EXECUTE FUNCTION ledger_transfer_customer_events();

-- A card's hold released by its own expiry timer. The issuer's word that the
-- authorization expired (from the gateway) takes the same id: one event,
-- whichever comes first.
CREATE FUNCTION ledger_hold_expired_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_events (event_id, type, customer_id, card_id, authorization_id,
                                 currency, process_id, occurred_at, data)
    SELECT 'evt_' || left(encode(sha256(convert_to(
               'hold-expired/' || split_part(NEW.idempotency_key, '/', 4), 'UTF8')), 'hex'), 32),
           'hold.expired', a.owner_id, split_part(NEW.idempotency_key, '/', 2),
           split_part(NEW.idempotency_key, '/', 4), NEW.currency,
           ledger_key_process(NEW.idempotency_key), NEW.created_at,
           jsonb_build_object('released_minor', NEW.amount_minor, 'pending_minor', 0,
                              'authorization_status', 'expired')
    FROM ledger_accounts a
    WHERE a.id = NEW.debit_account_id AND a.kind = 'wallet' AND a.owner_id IS NOT NULL
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_transfers_hold_expired
    AFTER INSERT ON ledger_transfers
    FOR EACH ROW
    WHEN (NEW.kind = 'void_pending' AND NEW.idempotency_key LIKE 'card/%/auth/%/void/expired')
    EXECUTE FUNCTION ledger_hold_expired_event();

-- What the card moved on the wallet for a transaction: its amount, or less
-- while an exception holds the rest for an operator (NULL: recorded before
-- this was kept, taken as the amount).
ALTER TABLE card_transactions ADD COLUMN posted_minor bigint CHECK (posted_minor >= 0);

CREATE FUNCTION card_transactions_customer_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_events (event_id, type, customer_id, card_id, authorization_id,
                                 feed_kind, posted_minor, currency, process_id, occurred_at, data)
    SELECT 'evt_' || left(encode(sha256(convert_to('card-transaction/' || t.transaction_id,
                                                   'UTF8')), 'hex'), 32),
           CASE t.kind WHEN 'clearing' THEN 'transaction.cleared'
                       WHEN 'refund' THEN 'transaction.refunded'
                       ELSE 'transaction.force_posted' END,
           t.customer_id, t.card_id, t.authorization_id,
           t.kind,
           CASE t.kind WHEN 'refund' THEN 1 ELSE -1 END * coalesce(t.posted_minor, t.amount_minor),
           t.currency,
           'card/' || t.card_id,
           t.occurred_at,
           jsonb_strip_nulls(jsonb_build_object(
               'transaction_id', t.transaction_id, 'amount_minor', t.amount_minor,
               'unposted_minor', nullif(t.amount_minor - coalesce(t.posted_minor, t.amount_minor), 0),
               'refunded_transaction_id', t.refunded_transaction_id,
               'merchant_name', t.merchant_name, 'mcc', t.mcc,
               'merchant_amount_minor', t.merchant_amount_minor,
               'merchant_currency', t.merchant_currency))
    FROM inserted t
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER card_transactions_customer_events
    AFTER INSERT ON card_transactions
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION card_transactions_customer_events();

-- Where events go: an upstream app's URL, the types it wants, and the
-- secrets its deliveries are signed with (Standard Webhooks). A rotated
-- secret keeps signing, beside the new one, until previous_expires_at.
CREATE TABLE webhook_endpoints (
    endpoint_id          text        PRIMARY KEY CHECK (endpoint_id ~ '^we_[a-z0-9]{1,40}$'),
    url                  text        NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    event_types          text[]      NOT NULL,
    secret               text        NOT NULL,
    previous_secret      text,
    previous_expires_at  timestamptz,
    status               text        NOT NULL DEFAULT 'enabled'
                         CHECK (status IN ('enabled', 'disabled', 'deleted')),
    disabled_reason      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL))
);
