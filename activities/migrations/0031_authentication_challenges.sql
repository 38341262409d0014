-- 3-D Secure challenges (workflows/authentication.py): one row per
-- challenge, written by the activity that makes and sends its one-time
-- code. Only the code's hash is kept (HMAC-SHA-256 under a random key of
-- the row's own), with the wrong answers counted against the maximum; the
-- customer's pending challenges are listed for the API and the bot.
CREATE TABLE authentication_challenges (
    authentication_id text        PRIMARY KEY CHECK (length(authentication_id) BETWEEN 1 AND 100),
    customer_id       text        NOT NULL,
    card_id           text        NOT NULL,
    merchant_name     text        NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor > 0),
    currency          text        NOT NULL,
    code_key          bytea       NOT NULL,
    code_digest       bytea       NOT NULL,
    -- A send retried after its code may have gone out makes a new code.
    codes_issued      integer     NOT NULL DEFAULT 1 CHECK (codes_issued >= 1),
    -- Wrong answers so far, and the answers checked (a retried check counts once).
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    attempts_max      integer     NOT NULL CHECK (attempts_max >= 1),
    answers_checked   integer     NOT NULL DEFAULT 0 CHECK (answers_checked >= 0),
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'authenticated', 'failed', 'timed_out')),
    expires_at        timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX authentication_challenges_pending
    ON authentication_challenges (customer_id, created_at)
    WHERE status = 'pending';
