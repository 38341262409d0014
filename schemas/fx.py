"""What cardflow reads from the FX rate source: firm quotes.

Rates are Decimal and travel as strings; a rate sent as a JSON number is a
broken contract, refused when parsed rather than trusted after a trip through
a binary float.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field

from schemas.money import Currency, Rate


def _not_a_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("a rate must be a decimal string, not a binary float")
    return value


WireRate = Annotated[Rate, BeforeValidator(_not_a_float)]


class FxQuoteStatus(StrEnum):
    OPEN = "open"
    EXPIRED = "expired"


class FxFixedSide(StrEnum):
    """Which amount the customer fixed; the other was computed from the rate."""

    SELL = "sell"
    BUY = "buy"


class FxQuote(BaseModel):
    id: str
    status: FxQuoteStatus
    sell_currency: Currency
    buy_currency: Currency
    fixed_side: FxFixedSide
    sell_amount_minor: int = Field(gt=0)
    buy_amount_minor: int = Field(gt=0)
    # Units of buy_currency per unit of sell_currency, after the spread.
    rate: WireRate
    mid_rate: WireRate
    spread_bps: int = Field(ge=0)
    created_at: AwareDatetime
    expires_at: AwareDatetime
