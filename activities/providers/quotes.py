"""FX quotes from the rate source, for conversions and crypto top-ups
(providers queue). A quote is firm until it expires; the same key returns the
same quote, so a retried activity never asks twice."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from activities.providers.fx import FxClient
from activities.queues import provider_activity
from schemas.fx import FxQuote
from schemas.ledger import AmountMinor, IdempotencyKey
from schemas.money import Currency

FX_QUOTE = "fx.quote"


class QuoteRequest(BaseModel):
    """Fix exactly one side: what is sold or what is bought."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: IdempotencyKey
    sell_currency: Currency
    buy_currency: Currency
    sell_amount_minor: AmountMinor | None = None
    buy_amount_minor: AmountMinor | None = None

    @model_validator(mode="after")
    def _one_side(self) -> QuoteRequest:
        if (self.sell_amount_minor is None) == (self.buy_amount_minor is None):
            raise ValueError("give exactly one of sell_amount_minor and buy_amount_minor")
        if self.sell_currency is self.buy_currency:
            raise ValueError("sell_currency and buy_currency must differ")
        return self


class QuoteActivities:
    def __init__(self, fx: FxClient) -> None:
        self.fx = fx

    @provider_activity(FX_QUOTE)
    async def quote(self, request: QuoteRequest) -> FxQuote:
        return await self.fx.create_quote(
            sell_currency=request.sell_currency,
            buy_currency=request.buy_currency,
            sell_amount_minor=request.sell_amount_minor,
            buy_amount_minor=request.buy_amount_minor,
            idempotency_key=request.key,
        )

    def all(self) -> list[object]:
        return [self.quote]
