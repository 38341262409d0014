-- Customers: contact details, notification preferences and KYC standing.
-- Personal data lives here, not in workflow histories' plaintext.
CREATE TABLE customers (
    customer_id        text        PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    first_name         text        NOT NULL,
    last_name          text        NOT NULL,
    date_of_birth      date        NOT NULL,
    country            text        NOT NULL CHECK (country ~ '^[A-Z]{3}$'),
    email              text,
    push_token         text,
    telegram_chat_id   text,
    preferred_channels text[]      NOT NULL DEFAULT '{email}',
    kyc_status         text        NOT NULL DEFAULT 'pending'
                       CHECK (kyc_status IN ('pending', 'approved', 'rejected', 'expired')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
