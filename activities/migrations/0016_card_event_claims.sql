-- The issuer's money events a card's process applied, by the issuer's own id
-- (a transaction or a reversal). Applying one claims its id first; the same
-- event applied again later (sent again after the card forgot it, or reaching
-- a later run of the card's process) finds the claim taken by another and
-- moves no money twice. A retry of the same claim by its claimant succeeds.
CREATE TABLE card_event_claims (
    subject_id  text        PRIMARY KEY,
    card_id     text        NOT NULL,
    claimant    text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
