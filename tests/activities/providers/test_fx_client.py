"""The FX client against the real simulator: Decimal rates, quotes, expiry, faults."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from activities.providers.fx import FxClient
from schemas.fx import FxFixedSide, FxQuote, FxQuoteStatus
from schemas.money import Currency


def client(sim: Any) -> FxClient:
    return FxClient(sim.provider_url("fx"))


@pytest.fixture
def rates(sim: Any) -> Any:
    sim.admin("PUT", "/options/fx", {"mid_rates": {"EUR/USD": "1.0800"}, "spread_bps": 50})
    return sim


async def test_a_quote_carries_decimal_rates_and_is_read_back(rates: Any) -> None:
    async with client(rates) as fx:
        created = await fx.create_quote(
            sell_currency=Currency.EUR,
            buy_currency=Currency.USD,
            sell_amount_minor=10_000,
            idempotency_key="fx/req-1/quote",
        )
        assert await fx.get_quote(created.id) == created
    # 1.08 * (1 - 0.005) = 1.0746; 100.00 EUR buys 107.46 USD.
    assert created.rate == Decimal("1.074600") and isinstance(created.rate, Decimal)
    assert created.mid_rate == Decimal("1.08")
    assert created.buy_amount_minor == 10_746 and created.fixed_side is FxFixedSide.SELL
    assert created.status is FxQuoteStatus.OPEN and created.expires_at > created.created_at


async def test_a_buy_side_quote_through_the_client(rates: Any) -> None:
    async with client(rates) as fx:
        created = await fx.create_quote(
            sell_currency=Currency.USD,
            buy_currency=Currency.EUR,
            buy_amount_minor=10_000,
            idempotency_key="fx/req-2/quote",
        )
    # USD/EUR mid is 1 / 1.08 = 0.925925...; less 50 bps, truncated: 0.921296.
    # 100.00 EUR cost 100 / 0.921296 = 108.5427... USD, rounded up to 108.55.
    assert created.rate == Decimal("0.921296")
    assert created.sell_amount_minor == 10_855 and created.fixed_side is FxFixedSide.BUY


async def test_an_expired_quote_reads_back_as_expired(rates: Any) -> None:
    rates.admin("PUT", "/options/fx", {"quote_ttl_seconds": 1})
    async with client(rates) as fx:
        created = await fx.create_quote(
            sell_currency=Currency.USDT,
            buy_currency=Currency.EUR,
            sell_amount_minor=5_000_000,
            idempotency_key="fx/req-3/quote",
        )
        # The simulator judges expiry by this machine's clock: read once past it.
        while (left := (created.expires_at - datetime.now(UTC)).total_seconds()) >= 0:
            await asyncio.sleep(left + 0.01)
        expired = await fx.get_quote(created.id)
    assert expired.status is FxQuoteStatus.EXPIRED
    assert expired.model_copy(update={"status": FxQuoteStatus.OPEN}) == created


async def test_a_short_rate_limit_is_waited_out_in_the_call(rates: Any) -> None:
    rates.fault(path_prefix="/fx/v1/quotes", kind="rate_limit", seconds=1, times=1)
    started_at = time.monotonic()
    async with client(rates) as fx:
        created = await fx.create_quote(
            sell_currency=Currency.GBP,
            buy_currency=Currency.JPY,
            sell_amount_minor=1_000,
            idempotency_key="fx/req-4/quote",
        )
    assert time.monotonic() - started_at >= 1.0
    assert created.buy_amount_minor > 0


async def test_an_unavailable_provider_is_retryable_and_a_keyed_retry_makes_one_quote(
    rates: Any,
) -> None:
    rates.fault(path_prefix="/fx/v1/quotes", kind="error", status=503, times=1)
    async with client(rates) as fx:
        with pytest.raises(ApplicationError) as error:
            await fx.create_quote(
                sell_currency=Currency.EUR,
                buy_currency=Currency.USD,
                sell_amount_minor=10_000,
                idempotency_key="fx/req-5/quote",
            )
        assert error.value.type == "ProviderUnavailable" and not error.value.non_retryable
        created = await fx.create_quote(
            sell_currency=Currency.EUR,
            buy_currency=Currency.USD,
            sell_amount_minor=10_000,
            idempotency_key="fx/req-5/quote",
        )
        again = await fx.create_quote(
            sell_currency=Currency.EUR,
            buy_currency=Currency.USD,
            sell_amount_minor=10_000,
            idempotency_key="fx/req-5/quote",
        )
        # Exactly one quote was made: the first number, and no second one.
        with pytest.raises(ApplicationError) as missing:
            await fx.get_quote("qt_000002")
    assert again == created and created.id == "qt_000001"
    assert missing.value.type == "ProviderNotFound"


async def test_an_impossible_quote_is_a_final_rejected_request(rates: Any) -> None:
    async with client(rates) as fx:
        with pytest.raises(ApplicationError) as same_currency:
            await fx.create_quote(
                sell_currency=Currency.USD,
                buy_currency=Currency.USD,
                sell_amount_minor=100,
                idempotency_key="fx/req-6/quote",
            )
        with pytest.raises(ApplicationError) as both_amounts:
            await fx.create_quote(
                sell_currency=Currency.USD,
                buy_currency=Currency.EUR,
                sell_amount_minor=100,
                buy_amount_minor=100,
                idempotency_key="fx/req-7/quote",
            )
    for error in (same_currency.value, both_amounts.value):
        assert error.type == "ProviderRejectedRequest" and error.non_retryable
    assert "buy_currency" in str(same_currency.value)
    # The field is kept, the provider's wording (which may echo the request) is not.
    assert both_amounts.value.details[0]["code"] == "value_error at body.buy_amount_minor"


def test_a_rate_sent_as_a_json_number_breaks_the_contract() -> None:
    quote = {
        "id": "qt_000001",
        "status": "open",
        "sell_currency": "EUR",
        "buy_currency": "USD",
        "fixed_side": "sell",
        "sell_amount_minor": 100,
        "buy_amount_minor": 107,
        "rate": "1.074600",
        "mid_rate": "1.080000",
        "spread_bps": 50,
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": "2025-01-01T00:00:30Z",
    }
    as_sent = json.dumps(quote)
    assert FxQuote.model_validate_json(as_sent).rate == Decimal("1.0746")
    as_number = as_sent.replace('"rate": "1.074600"', '"rate": 1.0746')
    assert as_number != as_sent
    with pytest.raises(ValidationError) as error:
        FxQuote.model_validate_json(as_number)
    assert error.value.errors()[0]["loc"] == ("rate",)
