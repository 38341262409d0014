-- A card reissued for a lost or stolen one names the card it replaces, so an
-- operator (and billing) can follow a customer's card from one to the next.
-- No foreign key: a card replaced before replacements were recorded is not in
-- this table, and its own replacement must still be recorded.
ALTER TABLE cards ADD COLUMN replaces text;
