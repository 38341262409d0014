"""Settled card transactions, recorded as the card's process posts them
(ledger queue). Cashback reads a customer's recent purchases from here."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import AwareDatetime, BaseModel, Field

from activities.queues import ledger_activity
from schemas.money import Currency

RECORD_CARD_TRANSACTION = "cards.record_transaction"
CLAIM_CARD_EVENT = "cards.claim_event"


class CardEventClaim(BaseModel):
    """A card's claim to apply one issuer money event, named by the issuer's id."""

    subject_id: str = Field(min_length=1, max_length=200)
    card_id: str = Field(min_length=1, max_length=100)
    # Who applies it: one application of one run of the card's process.
    claimant: str = Field(min_length=1, max_length=300)


class CardTransactionRecord(BaseModel):
    transaction_id: str = Field(min_length=1, max_length=100)
    card_id: str
    customer_id: str
    kind: str = Field(pattern=r"^(clearing|force_post|refund)$")
    authorization_id: str | None = None
    refunded_transaction_id: str | None = None
    amount_minor: int = Field(gt=0)
    currency: Currency
    merchant_amount_minor: int | None = None
    merchant_currency: Currency | None = None
    merchant_name: str | None = None
    mcc: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
    occurred_at: AwareDatetime
    # What the card moved on the wallet for it: the amount, or less while an
    # exception waits for an operator (None: recorded before it was kept).
    posted_minor: int | None = Field(default=None, ge=0)


class CardTransactionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, row: CardTransactionRecord) -> bool:
        """Insert the transaction once; False when it was already recorded."""
        inserted = await self._pool.fetchval(
            """
            INSERT INTO card_transactions (transaction_id, card_id, customer_id, kind,
                authorization_id, refunded_transaction_id, amount_minor, currency,
                merchant_amount_minor, merchant_currency, merchant_name, mcc, occurred_at,
                posted_minor)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            ON CONFLICT (transaction_id) DO NOTHING
            RETURNING true
            """,
            row.transaction_id,
            row.card_id,
            row.customer_id,
            row.kind,
            row.authorization_id,
            row.refunded_transaction_id,
            row.amount_minor,
            row.currency.value,
            row.merchant_amount_minor,
            row.merchant_currency.value if row.merchant_currency else None,
            row.merchant_name,
            row.mcc,
            row.occurred_at,
            row.posted_minor,
        )
        return bool(inserted)

    async def claim(self, claim: CardEventClaim) -> bool:
        """True when this claimant holds the claim (now or from before);
        False when another application already took the event."""
        holder = await self._pool.fetchval(
            """
            WITH claimed AS (
                INSERT INTO card_event_claims (subject_id, card_id, claimant)
                VALUES ($1, $2, $3)
                ON CONFLICT (subject_id) DO NOTHING
                RETURNING claimant
            )
            SELECT claimant FROM claimed
            UNION ALL
            SELECT claimant FROM card_event_claims WHERE subject_id = $1
            LIMIT 1
            """,
            claim.subject_id,
            claim.card_id,
            claim.claimant,
        )
        return bool(holder == claim.claimant)

    async def for_customer(self, customer_id: str, since: datetime) -> list[CardTransactionRecord]:
        rows = await self._pool.fetch(
            "SELECT * FROM card_transactions WHERE customer_id = $1 AND occurred_at >= $2"
            " ORDER BY occurred_at",
            customer_id,
            since,
        )
        return [
            CardTransactionRecord.model_validate(
                {k: v for k, v in dict(row).items() if k != "recorded_at"}
            )
            for row in rows
        ]


class CardTransactionActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.store = CardTransactionStore(pool)

    @ledger_activity(RECORD_CARD_TRANSACTION)
    async def record(self, row: CardTransactionRecord) -> bool:
        return await self.store.record(row)

    @ledger_activity(CLAIM_CARD_EVENT)
    async def claim(self, claim: CardEventClaim) -> bool:
        return await self.store.claim(claim)

    def all(self) -> list[object]:
        return [self.record, self.claim]
