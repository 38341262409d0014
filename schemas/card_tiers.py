"""A customer's KYC tier as their cards apply it: the tier's limit per
purchase and its monthly card spend over all the customer's cards, in each
card currency's minor units; and the card's hold within them, checked and
counted by the ledger's database in the same statement as the hold.

The limits are the program's (the worker's configuration), not a card's:
a change reaches every card at once, as a change of a customer's tier does.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.cards import DeclineReason
from schemas.customers import KycTier
from schemas.ledger import HoldRequest, TransferOutcome
from schemas.money import AMOUNT_MINOR_MAX, Currency


class TierCardLimits(BaseModel):
    """What a tier lets a customer's cards spend in one currency; None is no
    limit. The monthly limit is over all the customer's cards together."""

    model_config = ConfigDict(extra="forbid")

    per_purchase_max_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    monthly_max_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)


TierCardLimitsTable = dict[KycTier, dict[Currency, TierCardLimits]]


def default_tier_card_limits() -> TierCardLimitsTable:  # pragma: no mutate block
    """The program's defaults, in major units of a dollar's worth (a yen
    figure is 150 to the dollar), as the top-ups' tier caps are set."""
    units = {Currency.USD: 100, Currency.EUR: 100, Currency.GBP: 100, Currency.JPY: 150}

    def each(per_purchase: int | None, monthly: int | None) -> dict[Currency, TierCardLimits]:
        return {
            currency: TierCardLimits(
                per_purchase_max_minor=None if per_purchase is None else per_purchase * unit,
                monthly_max_minor=None if monthly is None else monthly * unit,
            )
            for currency, unit in units.items()
        }

    return {
        KycTier.BASIC: each(250, 1_000),
        KycTier.STANDARD: each(20_000, 100_000),
        KycTier.ENHANCED: each(None, 1_000_000),
    }


class TierHoldRequest(BaseModel):
    """A card's hold, within its customer's tier. `month` (UTC, YYYY-MM) is
    the month the approval counts in, from the issuer's time of asking;
    `authorized_minor` what this authorization was already approved for (the
    per-purchase limit covers its increments). Without `enforce` the hold is
    only counted: money the issuer already approved without the card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hold: HoldRequest
    customer_id: str = Field(min_length=1, max_length=64)
    month: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    authorized_minor: int = Field(default=0, ge=0, le=AMOUNT_MINOR_MAX)
    enforce: bool = True


def tier_month(at: datetime) -> str:
    """The UTC month an approval made at `at` counts in."""
    return at.astimezone(UTC).strftime("%Y-%m")


class TierHoldOutcome(BaseModel):
    """The hold's outcome, or (with `refusal`) why the tier refused it before
    the ledger was asked; `spent_minor` is the month's spend after it."""

    tier: KycTier
    refusal: DeclineReason | None = None
    detail: str = ""
    spent_minor: int = Field(ge=0)
    outcome: TransferOutcome | None = None
