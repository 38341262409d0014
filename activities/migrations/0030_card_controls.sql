-- The program's and each customer's card controls (schemas/card_controls.py),
-- versioned: a change is a new version, never an edit, so a card that was
-- sent version n ignores a late or repeated copy of n - 1. The newest
-- version of a scope is in force; cards hold it in their own state.
CREATE TABLE card_controls (
    scope      text        NOT NULL CHECK (scope IN ('program', 'customer')),
    -- '' for the program, the customer's id for a customer.
    scope_id   text        NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    controls   jsonb       NOT NULL,
    -- The change that made it (its process's request id): asked twice, one version.
    request_id text        NOT NULL UNIQUE,
    reason     text        NOT NULL,
    changed_by text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id, version),
    CHECK ((scope = 'program') = (scope_id = ''))
);
