-- An Idempotency-Key belongs to the API key that sent it: two API keys
-- sending the same Idempotency-Key make two requests, each remembered on its
-- own. Requests remembered before keep an empty key id; the gateway still
-- answers a repeat of one of them (same route, key and body) with its process.
ALTER TABLE gateway_api_requests ADD COLUMN api_key_id text NOT NULL DEFAULT '';
ALTER TABLE gateway_api_requests DROP CONSTRAINT gateway_api_requests_pkey;
ALTER TABLE gateway_api_requests ADD PRIMARY KEY (api_key_id, route, idempotency_key);
ALTER TABLE gateway_api_requests ALTER COLUMN api_key_id DROP DEFAULT;
