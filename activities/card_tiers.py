"""A card's hold within its customer's KYC tier (schemas/card_tiers.py),
run by the card as a local activity while the issuer waits: one call of the
database's card_hold_within_tier, which reads the customer's tier, checks
and counts the month's card spend under the month's row lock, and places
the hold through the ledger's own ledger_transfer_one, all in one statement.

Its outcome is the ledger's: a refusal is returned, not raised; a key used
again is the first hold's replay, neither checked nor counted again.
"""

from __future__ import annotations

import asyncpg
from temporalio.exceptions import ApplicationError

from activities.ledger.errors import LedgerError
from activities.ledger.store import Ledger, transfer_hash
from activities.metrics import record_ledger_rejection, timed_posting
from activities.queues import ledger_activity
from schemas.card_tiers import (
    TierCardLimitsTable,
    TierHoldOutcome,
    TierHoldRequest,
    default_tier_card_limits,
)
from schemas.cards import DeclineReason
from schemas.customers import KycTier
from schemas.ledger import TransferOutcome

HOLD_WITHIN_TIER = "cards.hold_within_tier"

_HOLD_WITHIN_TIER = (
    "SELECT * FROM card_hold_within_tier($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
    " $14)"
)


class CardTierActivities:
    """Card holds within the customer's tier, by the program's `limits`."""

    def __init__(self, pool: asyncpg.Pool, limits: TierCardLimitsTable | None = None) -> None:
        self._pool = pool
        self._ledger = Ledger(pool)
        self._limits = default_tier_card_limits() if limits is None else limits

    @ledger_activity(HOLD_WITHIN_TIER)
    async def hold_within_tier(self, request: TierHoldRequest) -> TierHoldOutcome:
        hold = request.hold
        tiers = list(KycTier)
        in_currency = [self._limits.get(tier, {}).get(hold.currency) for tier in tiers]
        with timed_posting("hold") as labels:
            row = await self._call(
                request.customer_id,
                request.month,
                request.enforce,
                request.authorized_minor,
                [tier.value for tier in tiers],
                [None if limit is None else limit.per_purchase_max_minor for limit in in_currency],
                [None if limit is None else limit.monthly_max_minor for limit in in_currency],
                hold.key,
                transfer_hash(hold),
                hold.debit,
                hold.credit,
                hold.amount_minor,
                hold.currency.value,
                hold.expires_at,
            )
            if row["tier_refusal"] is not None:
                labels["outcome"] = "rejected"
                return TierHoldOutcome(
                    tier=KycTier(row["tier"]),
                    refusal=DeclineReason(row["tier_refusal"]),
                    detail=row["detail"],
                    spent_minor=row["spent_minor"],
                )
            outcome = TransferOutcome(
                key=hold.key,
                transfer_id=row["transfer_id"],
                rejection=row["rejection"],
                detail=row["detail"],
                replayed=row["replayed"],
                created_at=row["created_at"],
                amount_minor=None if row["rejection"] else hold.amount_minor,
            )
            labels["outcome"] = "posted" if outcome.accepted else "rejected"
            if outcome.rejection is not None and not outcome.replayed:
                record_ledger_rejection("hold", outcome.rejection.value)
            return TierHoldOutcome(
                tier=KycTier(row["tier"]), spent_minor=row["spent_minor"], outcome=outcome
            )

    async def _call(self, *args: object) -> asyncpg.Record:
        """The statement, through the ledger's own keyed call; its errors (a
        key reused with another payload) are final."""
        try:
            row: asyncpg.Record | None = await self._ledger.keyed_call(
                self._pool.fetchrow, _HOLD_WITHIN_TIER, *args
            )
        except LedgerError as error:
            raise ApplicationError(
                str(error), type=type(error).__name__, non_retryable=True
            ) from None
        assert row is not None
        return row

    def all(self) -> list[object]:
        return [self.hold_within_tier]
