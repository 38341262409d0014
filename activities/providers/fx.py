"""Client of the FX rate source's quote API."""

from __future__ import annotations

from activities.providers.http import ProviderClient
from schemas.fx import FxQuote
from schemas.money import Currency
from schemas.providers import FX


class FxClient(ProviderClient):
    provider = FX

    async def create_quote(
        self,
        *,
        sell_currency: Currency,
        buy_currency: Currency,
        sell_amount_minor: int | None = None,
        buy_amount_minor: int | None = None,
        idempotency_key: str,
    ) -> FxQuote:
        """A firm quote fixing exactly one of the two amounts; the other is
        computed at the quoted rate, rounded against the customer. Giving both
        or neither is a ProviderRejectedRequest."""
        body: dict[str, str | int] = {
            "sell_currency": sell_currency.value,
            "buy_currency": buy_currency.value,
        }
        if sell_amount_minor is not None:
            body["sell_amount_minor"] = sell_amount_minor
        if buy_amount_minor is not None:
            body["buy_amount_minor"] = buy_amount_minor
        return await self.call(
            "POST", "/v1/quotes", FxQuote, json=body, idempotency_key=idempotency_key
        )

    async def get_quote(self, quote_id: str) -> FxQuote:
        """The quote as created, with status expired once past expires_at."""
        return await self.call("GET", f"/v1/quotes/{quote_id}", FxQuote)
