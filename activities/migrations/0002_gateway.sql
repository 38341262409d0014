-- The gateway's memory: which provider events it has delivered, and which
-- upstream requests (by Idempotency-Key) started which process.

CREATE TABLE gateway_webhook_events (
    provider     text        NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    -- delivered (to a workflow) or ignored (no route for this event type)
    outcome      text        NOT NULL CHECK (outcome IN ('delivered', 'ignored')),
    workflow_id  text,
    -- webhook-timestamp of the accepted delivery: a message signed no later
    -- is a replay, a provider's redelivery is signed afresh.
    signed_at    bigint      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

CREATE TABLE gateway_api_requests (
    route            text        NOT NULL,
    idempotency_key  text        NOT NULL,
    request_hash     bytea       NOT NULL,
    workflow_id      text        NOT NULL,
    run_id           text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route, idempotency_key)
);
