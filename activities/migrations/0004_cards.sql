-- Cards cardflow issued, so provider events about a card find their process.
CREATE TABLE cards (
    card_id     text        PRIMARY KEY,
    request_id  text        NOT NULL,
    customer_id text        NOT NULL REFERENCES customers (customer_id),
    kind        text        NOT NULL CHECK (kind IN ('virtual', 'physical')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_customer ON cards (customer_id);
