-- An API key may be bound to customers (a partner integration's key): it then
-- acts only on those customers' processes, cards and data, and on no
-- program-wide route (billing runs, reconciliations, operators' decisions).
-- NULL: bound to none, the key acts for every customer (every key issued
-- before).
CREATE FUNCTION api_key_customers_valid(customers text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT customers IS NULL OR (
        cardinality(customers) BETWEEN 1 AND 100
        AND (SELECT bool_and(customer IS NOT NULL AND customer ~ '^[A-Za-z0-9_.-]{1,64}$')
             FROM unnest(customers) AS customer)
    )
$$;
ALTER TABLE api_keys ADD COLUMN customers text[]
    CHECK (api_key_customers_valid(customers));
