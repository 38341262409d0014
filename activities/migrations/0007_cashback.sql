-- Cashback campaigns as data: each version of a campaign is one validated JSON
-- document (schemas/cashback.py Campaign), written once and never changed; the
-- latest version of an id is the one in force. The validity window is copied
-- out of the document so the campaigns in force at an instant are one query.
CREATE TABLE cashback_campaigns (
    campaign_id text        NOT NULL CHECK (campaign_id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    version     integer     NOT NULL CHECK (version >= 1),
    document    jsonb       NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz CHECK (valid_to IS NULL OR valid_to > valid_from),
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, version)
);

-- A customer's segment for campaign rules; a customer with no row is 'standard'.
CREATE TABLE customer_segments (
    customer_id text        PRIMARY KEY REFERENCES customers (customer_id),
    segment     text        NOT NULL CHECK (segment ~ '^[a-z0-9_-]{1,32}$'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
