-- Fraud cases: one row per case a fraud scan opened (workflows/fraud.py),
-- written once by the case's process as it opens, then moved by it as
-- cards are frozen, the case is escalated and an operator decides. A
-- customer has at most one open case: a second case opening while one is
-- open finds it and ends as a duplicate.
CREATE TABLE fraud_cases (
    case_id      text        PRIMARY KEY CHECK (length(case_id) BETWEEN 1 AND 100),
    customer_id  text        NOT NULL,
    workflow_id  text        NOT NULL,
    score        integer     NOT NULL CHECK (score >= 0),
    signals      jsonb       NOT NULL DEFAULT '[]'::jsonb,
    auto_freeze  boolean     NOT NULL DEFAULT false,
    status       text        NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'escalated', 'cleared', 'confirmed')),
    -- The cards this case froze (a card frozen before it is not among them).
    frozen_cards text[]      NOT NULL DEFAULT '{}',
    escalations  integer     NOT NULL DEFAULT 0 CHECK (escalations >= 0),
    decision     text        CHECK (decision IN ('clear', 'confirm')),
    decided_by   text,
    decision_reason text,
    opened_at    timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX fraud_cases_one_open ON fraud_cases (customer_id)
    WHERE status IN ('open', 'escalated');
CREATE INDEX fraud_cases_customer ON fraud_cases (customer_id, decided_at);

-- The fraud scan pages through the customers with events in its window, in
-- customer id order.
CREATE INDEX customer_events_customer_time ON customer_events (customer_id, occurred_at);
