-- API keys of the upstream HTTP API (`/v1`). A key is `cfk_<key_id>_<secret>`:
-- only its key id (the lookup, shown by `cardflow apikey list`) and an
-- HMAC-SHA256 of the secret under a pepper kept outside the database are
-- stored, so neither a copy of this table nor its backups let anyone call the API.

CREATE TABLE api_keys (
    key_id        text        PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{12}$'),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes        text[]      NOT NULL CHECK (cardinality(scopes) >= 1),
    -- HMAC-SHA256(pepper, key_id ':' secret): 32 bytes.
    secret_hash   bytea       NOT NULL CHECK (length(secret_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- NULL: never expires. A rotation sets the old key's expiry to the end of
    -- the overlap.
    expires_at    timestamptz,
    revoked_at    timestamptz,
    -- Written at most once a minute per key and gateway process.
    last_used_at  timestamptz,
    -- The key this one was rotated from, if any.
    rotated_from  text        REFERENCES api_keys (key_id)
);
CREATE INDEX api_keys_name ON api_keys (name);
