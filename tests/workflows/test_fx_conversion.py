"""FX conversion `fx/{request_id}` through the FX simulator, the ledger and the
gateway: exact legs, expiry, cancel, declines, provider faults, refusals."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from fractions import Fraction
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import CancelledError
from typer.testing import CliRunner

from activities.events import events_after
from activities.ledger import AccountNotFound, Ledger
from activities.ledger.verify import verify
from schemas import accounts
from schemas.fx import (
    FxConversionInput,
    FxConversionResult,
    FxCurrencyTerms,
    FxOutcome,
    FxPolicy,
    FxQuoteOffer,
    FxStatus,
)
from schemas.money import MINOR_UNIT_EXPONENT, Currency
from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROCESS_STATUS
from starters import fx
from tests import polling
from tests.conftest import Platform
from tests.customers import customer, funding_key
from tests.interruptions import table_locked, until_activity_cancel_requested, until_waiting
from workflows.fx import CONFIRM_UPDATE, FxConversion, fx_workflow_id
from workflows.fx_steps import STAGE_NOTIFYING

# Mid rates the tests set, so the expected amounts do not depend on the
# simulator's table; the spread is SPREAD_BPS.
MID_RATES = {"USD/EUR": "0.9231", "USD/JPY": "149.53", "JPY/USD": "0.006687"}
SPREAD_BPS = 30
# Fixed fees per sell currency plus 50 bps; short waits so tests run in seconds.
POLICY = FxPolicy(
    fee_bps=50,
    confirm_wait_seconds_max=60,
    late_confirm_window_seconds=2,
    quote_wait_seconds=30,
    notification_wait_seconds=3,
)


# ----- helpers ----------------------------------------------------------------


def rates(platform: Platform, **options: Any) -> None:
    platform.sim.admin(
        "PUT", "/options/fx", {"mid_rates": MID_RATES, "spread_bps": SPREAD_BPS, **options}
    )


def conversion(
    customer_id: str,
    sell: Currency,
    buy: Currency,
    *,
    sell_minor: int | None = None,
    buy_minor: int | None = None,
    policy: FxPolicy = POLICY,
) -> FxConversionInput:
    return FxConversionInput(
        request_id=f"r-{uuid.uuid4().hex[:10]}",
        customer_id=customer_id,
        sell_currency=sell,
        buy_currency=buy,
        sell_amount_minor=sell_minor,
        buy_amount_minor=buy_minor,
        policy=policy,
    )


async def quoted(platform: Platform, request: FxConversionInput) -> FxQuoteOffer:
    return await fx.quote(platform.stack.client, platform.stack.queues, request)


def handle_of(platform: Platform, request_id: str) -> WorkflowHandle[Any, FxConversionResult]:
    return platform.stack.client.get_workflow_handle(
        fx_workflow_id(request_id), result_type=FxConversionResult
    )


async def refusal(call: Any) -> str:
    try:
        await call
    except WorkflowUpdateFailedError as error:
        # The reason itself, without the failure's type name.
        return str(getattr(error.cause, "message", error.cause))
    raise AssertionError("the update was accepted")


async def posted(platform: Platform, *codes: str) -> dict[str, int]:
    """Each account's posted balance (credits - debits); 0 for one never opened."""
    ledger = Ledger(platform.stack.pool)
    balances: dict[str, int] = {}
    for code in codes:
        try:
            balances[code] = (await ledger.balance(code)).posted
        except AccountNotFound:
            balances[code] = 0
    return balances


def system_accounts(sell: Currency, buy: Currency) -> list[str]:
    return [
        accounts.fx_pool(sell),
        accounts.fx_pool(buy),
        accounts.revenue_fx(buy),
        accounts.fx_rounding(buy),
        accounts.revenue_fees(sell),
    ]


def expected_legs(offer: FxQuoteOffer) -> dict[str, int]:
    """The buy-currency legs, from the quote with plain fractions: the pool pays
    floor(sell x mid); the spread is floor(sell x (mid - rate)); the rest rounds."""
    quote = offer.quote
    shift = Fraction(10) ** (
        MINOR_UNIT_EXPONENT[quote.buy_currency] - MINOR_UNIT_EXPONENT[quote.sell_currency]
    )
    sold = Fraction(quote.sell_amount_minor) * shift
    pool_out = math.floor(sold * Fraction(quote.mid_rate))
    spread = math.floor(sold * (Fraction(quote.mid_rate) - Fraction(quote.rate)))
    return {
        "pool_out": pool_out,
        "spread": spread,
        "rounding": pool_out - quote.buy_amount_minor - spread,
    }


def messages_to(platform: Platform, email: str) -> list[str]:
    response = httpx.get(
        f"{platform.sim.provider_url('notify')}/v1/messages", params={"to": email}, timeout=10
    )
    return [message["body"] for message in response.json()["data"]]


async def stage_of(
    platform: Platform, request_id: str, stage: str, seconds: float = 20
) -> FxStatus:
    return await polling.until(
        lambda: fx.status(platform.stack.client, request_id),
        lambda status: status.stage == stage,
        f"reached {stage!r}",
        seconds,
    )


# ----- converting ---------------------------------------------------------------


async def test_a_confirmed_conversion_posts_one_batch_of_exact_legs(platform: Platform) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000, Currency.EUR: 0})
    # 100.04 USD at 0.920330 (0.9231 less 30 bps) buys 92.06 EUR; at mid the
    # pool pays 92.34 EUR: 0.27 spread and 0.01 left by the two roundings.
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004)
    offer = await quoted(platform, request)
    quote = offer.quote
    assert (quote.sell_amount_minor, quote.buy_amount_minor) == (10_004, 9_206)
    assert str(quote.rate) == "0.920330" and str(quote.mid_rate) == "0.923100"
    # Fee: 0.25 fixed + 50 bps of 100.04 (0.5002, rounded up to 0.51).
    assert (offer.fee_minor, offer.total_debit_minor) == (76, 10_080)
    assert offer.expires_at == quote.expires_at
    legs = expected_legs(offer)
    assert legs == {"pool_out": 9_234, "spread": 27, "rounding": 1}

    status = await fx.status(platform.stack.client, request.request_id)
    assert status.stage == "awaiting confirmation" and status.quote == quote
    assert status.fee_minor == 76 and status.expires_at == offer.expires_at

    # Two confirms at once (the client's and, say, an operator's from the Web
    # UI): one batch is posted and both get the same answer.
    handle = handle_of(platform, request.request_id)
    first, second = await asyncio.gather(
        fx.confirm(platform.stack.client, request.request_id),
        handle.execute_update(CONFIRM_UPDATE, id="web-ui", result_type=FxConversionResult),
    )
    assert first == second
    assert first.outcome is FxOutcome.CONVERTED and first.quote_id == quote.id
    assert (first.sold_amount_minor, first.bought_amount_minor, first.fee_minor) == (
        10_004,
        9_206,
        76,
    )
    assert (first.spread_minor, first.rounding_minor) == (27, 1)
    assert first.rate == quote.rate and first.spread_bps == SPREAD_BPS

    result = await handle.result()
    assert result.notified and result.model_copy(update={"notified": False}) == first
    # A repeated confirm after the process ended answers the first one's answer.
    assert (await fx.confirm(platform.stack.client, request.request_id)) == first

    usd, eur = Currency.USD, Currency.EUR
    balances = await posted(
        platform,
        accounts.wallet(customer_id, usd),
        accounts.wallet(customer_id, eur),
        *system_accounts(usd, eur),
    )
    assert balances == {
        accounts.wallet(customer_id, usd): 20_000 - 10_004 - 76,
        accounts.wallet(customer_id, eur): 9_206,
        accounts.fx_pool(usd): 10_004,
        accounts.fx_pool(eur): -9_234,
        accounts.revenue_fx(eur): 27,
        accounts.fx_rounding(eur): 1,
        accounts.revenue_fees(usd): 76,
    }
    assert await verify(platform.stack.pool) == []
    # The customer's events: both legs converted, the fee a fee, all of this process.
    events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
    moved = [
        (e.type, e.data["direction"], e.data["amount_minor"])
        for e in events
        if e.process_id == fx_workflow_id(request.request_id)
    ]
    assert sorted(moved) == [
        ("fee.charged", "out", 76),
        ("fx.converted", "in", 9_206),
        ("fx.converted", "out", 10_004),
    ]

    description = await handle.describe()
    attributes = description.typed_search_attributes
    assert attributes.get(CUSTOMER_ID) == customer_id
    assert attributes.get(PROCESS_STATUS) == "converted"
    assert (attributes.get(CURRENCY), attributes.get(AMOUNT_MINOR)) == ("USD", 10_004)
    assert any("92.06 EUR" in body for body in messages_to(platform, f"{customer_id}@example.com"))


async def test_the_result_names_the_sale_the_fee_and_what_the_wallet_lost(
    platform: Platform,
) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004)
    offer = await quoted(platform, request)
    result = await fx.confirm(platform.stack.client, request.request_id)
    sell_wallet = accounts.wallet(customer_id, Currency.USD)
    debited = 20_000 - (await posted(platform, sell_wallet))[sell_wallet]
    assert (result.sold_amount_minor, result.fee_minor) == (10_004, 76)
    assert result.debited_amount_minor == debited == offer.total_debit_minor
    # The same figures in the JSON the API and the CLI answer.
    answered = json.loads(result.model_dump_json())
    assert (
        answered["sold_amount_minor"],
        answered["fee_minor"],
        answered["debited_amount_minor"],
    ) == (10_004, 76, debited)


async def test_a_buy_side_quote_pays_exactly_the_amount_fixed(platform: Platform) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    request = conversion(customer_id, Currency.USD, Currency.EUR, buy_minor=5_000)
    offer = await quoted(platform, request)
    # 50.00 EUR at 0.920330 costs 54.3283... USD, rounded up: 54.33.
    assert (offer.quote.fixed_side.value, offer.quote.sell_amount_minor) == ("buy", 5_433)
    assert offer.fee_minor == 25 + 28  # 50 bps of 54.33 is 0.27165 -> 0.28
    result = await fx.confirm(platform.stack.client, request.request_id)
    assert (result.sold_amount_minor, result.bought_amount_minor) == (5_433, 5_000)
    legs = expected_legs(offer)
    assert (result.spread_minor, result.rounding_minor) == (legs["spread"], legs["rounding"])
    usd, eur = Currency.USD, Currency.EUR
    balances = await posted(
        platform, accounts.wallet(customer_id, usd), accounts.wallet(customer_id, eur)
    )
    # The customer had no EUR wallet: the conversion opened it.
    assert balances == {
        accounts.wallet(customer_id, usd): 20_000 - 5_433 - 53,
        accounts.wallet(customer_id, eur): 5_000,
    }
    assert await verify(platform.stack.pool) == []


async def test_jpy_and_usd_convert_to_the_unit_both_ways(platform: Platform) -> None:
    rates(platform)
    usd, jpy = Currency.USD, Currency.JPY
    customer_id = await customer(platform, {usd: 50_000, jpy: 100_000})
    # 123.57 USD at 149.081410 is 18,421.98... yen: 18,421 (at mid 18,477.42:
    # 18,477 out of the pool, 55 spread, 1 yen of rounding).
    to_yen = conversion(customer_id, usd, jpy, sell_minor=12_357)
    offer = await quoted(platform, to_yen)
    assert offer.quote.buy_amount_minor == 18_421
    assert expected_legs(offer) == {"pool_out": 18_477, "spread": 55, "rounding": 1}
    result = await fx.confirm(platform.stack.client, to_yen.request_id)
    assert (result.bought_amount_minor, result.spread_minor, result.rounding_minor) == (
        18_421,
        55,
        1,
    )
    # Buying exactly 10.00 USD with yen: 10.00 / 0.006666 = 1,500.15 yen, so
    # 1,501 yen (rounded up), plus a fee of 40 + 50 bps (7.505 -> 8) yen.
    to_dollars = conversion(customer_id, jpy, usd, buy_minor=1_000)
    back = await quoted(platform, to_dollars)
    assert (back.quote.sell_amount_minor, back.fee_minor) == (1_501, 48)
    legs = expected_legs(back)
    returned = await fx.confirm(platform.stack.client, to_dollars.request_id)
    assert (returned.spread_minor, returned.rounding_minor) == (legs["spread"], legs["rounding"])

    fee_usd = 25 + math.ceil(Fraction(12_357 * 50, 10_000))
    balances = await posted(
        platform,
        accounts.wallet(customer_id, usd),
        accounts.wallet(customer_id, jpy),
        accounts.fx_pool(usd),
        accounts.fx_pool(jpy),
        accounts.fx_rounding(jpy),
        accounts.fx_rounding(usd),
        accounts.revenue_fees(jpy),
    )
    assert balances == {
        accounts.wallet(customer_id, usd): 50_000 - 12_357 - fee_usd + 1_000,
        accounts.wallet(customer_id, jpy): 100_000 + 18_421 - 1_501 - 48,
        accounts.fx_pool(usd): 12_357 - legs["pool_out"],
        accounts.fx_pool(jpy): 1_501 - 18_477,
        accounts.fx_rounding(jpy): 1,
        accounts.fx_rounding(usd): legs["rounding"],
        accounts.revenue_fees(jpy): 48,
    }
    # Every currency balances to the unit.
    assert await verify(platform.stack.pool) == []


# ----- not converting: expiry, cancel, decline ------------------------------------


async def test_a_confirm_after_expiry_is_refused_with_the_reason_and_nothing_posted(
    platform: Platform,
) -> None:
    rates(platform, quote_ttl_seconds=1)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    # A late window far longer than the test takes: the process is surely
    # still open when the late confirm arrives.
    patient = POLICY.model_copy(update={"late_confirm_window_seconds": 600})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000, policy=patient)
    offer = await quoted(platform, request)
    handle = handle_of(platform, request.request_id)
    # The process itself has recorded the quote's expiry.
    expired = await stage_of(platform, request.request_id, FxOutcome.EXPIRED.value)
    assert expired.outcome is FxOutcome.EXPIRED
    # The process is still open (late_confirm_window_seconds): the validator answers.
    reason = await refusal(handle.execute_update(CONFIRM_UPDATE, id="late"))
    assert f"expired at {offer.expires_at.isoformat()}" in reason
    # Cancelling the late window ends the process as it was: expired.
    await handle.cancel()
    result = await handle.result()
    assert result.outcome is FxOutcome.EXPIRED and result.sold_amount_minor == 0
    # After the process ended, the client function answers from its result.
    late = await refusal(fx.confirm(platform.stack.client, request.request_id))
    assert late.startswith("expired") and "expired at" in late
    balances = await posted(
        platform, accounts.wallet(customer_id, Currency.USD), accounts.fx_pool(Currency.USD)
    )
    assert balances == {
        accounts.wallet(customer_id, Currency.USD): 20_000,
        accounts.fx_pool(Currency.USD): 0,
    }


async def test_an_unconfirmed_quote_expires_at_the_policy_maximum(platform: Platform) -> None:
    rates(platform)  # the rate source's quotes live 30 s
    customer_id = await customer(platform, {Currency.USD: 20_000})
    policy = POLICY.model_copy(
        update={"confirm_wait_seconds_max": 1, "late_confirm_window_seconds": 0}
    )
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000, policy=policy)
    offer = await quoted(platform, request)
    assert offer.expires_at < offer.quote.expires_at
    handle = handle_of(platform, request.request_id)
    result = await handle.result()
    assert result.outcome is FxOutcome.EXPIRED
    assert result.reason.startswith(f"quote {offer.quote.id} expired at")
    assert (await handle.describe()).typed_search_attributes.get(PROCESS_STATUS) == "expired"
    assert await posted(platform, accounts.wallet(customer_id, Currency.USD)) == {
        accounts.wallet(customer_id, Currency.USD): 20_000
    }


async def test_cancel_ends_the_conversion_with_nothing_posted(platform: Platform) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000)
    await quoted(platform, request)
    answer = await fx.cancel(platform.stack.client, request.request_id)
    assert answer.startswith("cancelled")
    result = await handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.CANCELLED
    # Cancelling again answers the same; confirming is refused.
    assert await fx.cancel(platform.stack.client, request.request_id) == answer
    refused = await refusal(fx.confirm(platform.stack.client, request.request_id))
    assert refused.startswith("cancelled")
    assert await posted(platform, accounts.wallet(customer_id, Currency.USD)) == {
        accounts.wallet(customer_id, Currency.USD): 20_000
    }


async def test_a_cancellation_while_a_step_awaits_the_ledger_ends_cancelled_not_failed(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, {Currency.USD: 20_000})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000)
    async with table_locked(platform.stack.database_url, "customers") as lock:
        handle = await fx.start(platform.stack.client, platform.stack.queues, request)
        # The customer check waits for the database; the process is cancelled there.
        await until_waiting(platform.stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    status = await handle.query(FxConversion.status)
    assert (status.stage, status.reason) == ("cancelled", "the conversion was cancelled")
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "cancelled"
    assert await posted(platform, accounts.wallet(customer_id, Currency.USD)) == {
        accounts.wallet(customer_id, Currency.USD): 20_000
    }


async def test_insufficient_funds_for_the_fee_declines_the_whole_batch(
    platform: Platform,
) -> None:
    rates(platform)
    # Enough for the 100.04 USD sold, not for the 0.76 fee on top: the fee leg
    # fails, so the batch (the sale included) is rejected as one.
    customer_id = await customer(platform, {Currency.USD: 10_004})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004)
    await quoted(platform, request)
    reason = await refusal(fx.confirm(platform.stack.client, request.request_id))
    assert reason.startswith("declined: insufficient funds")
    result = await handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.DECLINED and result.reason == reason
    assert result.sold_amount_minor == result.bought_amount_minor == result.fee_minor == 0
    usd, eur = Currency.USD, Currency.EUR
    balances = await posted(
        platform,
        accounts.wallet(customer_id, usd),
        accounts.wallet(customer_id, eur),
        *system_accounts(usd, eur),
    )
    assert balances == {
        accounts.wallet(customer_id, usd): 10_004,
        **{code: 0 for code in balances if code != accounts.wallet(customer_id, usd)},
    }
    # The wallet saw its funding and nothing else.
    page = await Ledger(platform.stack.pool).history(accounts.wallet(customer_id, usd))
    assert [entry.key for entry in page.entries] == [funding_key(customer_id, Currency.USD)]
    assert await verify(platform.stack.pool) == []


# ----- the rate source failing -----------------------------------------------------


async def test_the_fx_provider_failing_with_5xx_and_429_then_recovering_quotes_once(
    platform: Platform,
) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    platform.sim.fault(kind="error", status=503, path_prefix="/fx/v1/quotes", times=2)
    platform.sim.fault(kind="rate_limit", seconds=1, path_prefix="/fx/v1/quotes", times=1)
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000)
    offer = await quoted(platform, request)
    # The simulator numbers its quotes from an offset (a multiple of 1,000):
    # this is the first it made, and it made no other.
    number = int(offer.quote.id.removeprefix("qt_"))
    assert number % 1_000 == 1
    async with httpx.AsyncClient(base_url=platform.sim.provider_url("fx"), timeout=10) as rates_api:
        assert (await rates_api.get(f"/v1/quotes/qt_{number + 1:06d}")).status_code == 404
    assert platform.sim.admin("GET", "/faults") == []
    assert (await fx.confirm(platform.stack.client, request.request_id)).outcome is (
        FxOutcome.CONVERTED
    )


async def test_a_rate_source_down_past_the_policy_ends_failed_with_nothing_posted(
    platform: Platform,
) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    platform.sim.fault(kind="error", status=503, path_prefix="/fx/v1/quotes")
    policy = POLICY.model_copy(update={"quote_wait_seconds": 2})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=5_000, policy=policy)
    reason = await refusal(quoted(platform, request))
    assert reason == "failed: the rate source gave no quote within 2s"
    result = await handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.FAILED and result.quote_id is None
    assert await posted(platform, accounts.wallet(customer_id, Currency.USD)) == {
        accounts.wallet(customer_id, Currency.USD): 20_000
    }


async def test_a_permanent_4xx_from_the_fx_provider_refuses_cleanly(platform: Platform) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.JPY: 1_000})
    # One yen buys less than a cent: the rate source answers 422. The policy
    # lets such a small amount through to the rate source.
    tiny = FxCurrencyTerms(fee_fixed_minor=0, sell_amount_min_minor=1, sell_amount_max_minor=10)
    policy = POLICY.model_copy(update={"terms": {Currency.JPY: tiny}})
    request = conversion(customer_id, Currency.JPY, Currency.USD, sell_minor=1, policy=policy)
    reason = await refusal(quoted(platform, request))
    assert reason.startswith("refused: the rate source refused the quote")
    assert "sell_amount_minor" in reason
    result = await handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.REFUSED and result.quote_id is None
    assert await posted(platform, accounts.wallet(customer_id, Currency.JPY)) == {
        accounts.wallet(customer_id, Currency.JPY): 1_000
    }


# ----- refusals, notification, the API ---------------------------------------------


async def test_conversions_outside_the_rules_are_refused_with_the_reason(
    platform: Platform,
) -> None:
    rates(platform)
    approved = await customer(platform, {Currency.USD: 10**8, Currency.EUR: 0})
    pending = await customer(platform, {Currency.USD: 20_000}, approved=False)
    usd, eur, gbp = Currency.USD, Currency.EUR, Currency.GBP
    no_gbp = POLICY.model_copy(update={"terms": {usd: POLICY.terms[usd]}})
    cases = [
        (conversion(pending, usd, eur, sell_minor=5_000), "onboarding is pending"),
        (conversion(approved, gbp, eur, sell_minor=5_000), "has no GBP wallet"),
        (conversion(approved, usd, eur, sell_minor=99), "below the minimum 1.00 USD"),
        (conversion(approved, usd, eur, sell_minor=1_000_001), "above the maximum"),
        # The buy side fixed: 10,000.00 EUR costs more than 10,000.00 USD,
        # known only once quoted.
        (conversion(approved, usd, eur, buy_minor=1_000_000), "above the maximum"),
        (conversion(approved, eur, usd, sell_minor=5_000, policy=no_gbp), "EUR is not offered"),
    ]
    for request, expected in cases:
        reason = await refusal(quoted(platform, request))
        assert reason.startswith("refused") and expected in reason, (expected, reason)
        result = await handle_of(platform, request.request_id).result()
        assert result.outcome is FxOutcome.REFUSED
    balances = await posted(platform, accounts.wallet(approved, usd), accounts.wallet(pending, usd))
    assert balances == {
        accounts.wallet(approved, usd): 10**8,
        accounts.wallet(pending, usd): 20_000,
    }


async def test_a_failed_notification_never_undoes_the_conversion(platform: Platform) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    platform.sim.fault(kind="error", status=500, path_prefix="/notify")
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004)
    await quoted(platform, request)
    confirmed = await fx.confirm(platform.stack.client, request.request_id)
    result = await handle_of(platform, request.request_id).result()
    assert result.outcome is FxOutcome.CONVERTED and not result.notified
    assert result == confirmed
    assert await posted(platform, accounts.wallet(customer_id, Currency.EUR)) == {
        accounts.wallet(customer_id, Currency.EUR): 9_206
    }


async def test_a_cancellation_while_the_notice_is_sent_leaves_the_conversion_converted(
    platform: Platform,
) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    # The notice keeps failing and the process would wait long for it.
    platform.sim.fault(kind="error", status=503, path_prefix="/notify", times=10_000)
    patient = POLICY.model_copy(update={"notification_wait_seconds": 600})
    request = conversion(customer_id, Currency.USD, Currency.EUR, sell_minor=10_004, policy=patient)
    await quoted(platform, request)
    confirmed = await fx.confirm(platform.stack.client, request.request_id)
    handle = handle_of(platform, request.request_id)
    await stage_of(platform, request.request_id, STAGE_NOTIFYING)
    await handle.cancel()
    # The money moved: the cancellation only stops the wait for the notice.
    result = await handle.result()
    assert result.outcome is FxOutcome.CONVERTED and not result.notified
    assert result == confirmed
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "converted"
    assert await posted(platform, accounts.wallet(customer_id, Currency.EUR)) == {
        accounts.wallet(customer_id, Currency.EUR): 9_206
    }


async def test_the_api_quotes_once_per_key_confirms_and_reports_status(
    platform: Platform,
) -> None:
    rates(platform)
    customer_id = await customer(platform, {Currency.USD: 20_000})
    body = {
        "customer_id": customer_id,
        "sell_currency": "USD",
        "buy_currency": "EUR",
        "sell_amount_minor": 10_004,
    }
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as api:
        key = {"Idempotency-Key": f"fx-{uuid.uuid4().hex[:8]}"}
        first = await api.post("/v1/fx/quotes", json=body, headers=key)
        again = await api.post("/v1/fx/quotes", json=body, headers=key)
        assert (first.status_code, again.status_code) == (202, 200), first.text
        assert first.json()["offer"] == again.json()["offer"]
        offer = first.json()["offer"]
        assert offer["quote"]["buy_amount_minor"] == 9_206 and offer["fee_minor"] == 76
        assert isinstance(offer["quote"]["rate"], str)
        request_id = offer["request_id"]
        assert first.json()["workflow_id"] == fx_workflow_id(request_id)

        status = await api.get(f"/v1/fx/{request_id}")
        assert status.json()["stage"] == "awaiting confirmation"
        assert status.json()["expires_at"] is not None

        confirmed = await api.post(f"/v1/fx/{request_id}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["outcome"] == "converted"
        assert confirmed.json()["bought_amount_minor"] == 9_206
        # Once the process has ended, a cancel is refused with its outcome.
        result = await handle_of(platform, request_id).result()
        assert result.outcome is FxOutcome.CONVERTED
        cancel = await api.post(f"/v1/fx/{request_id}/cancel")
        assert (cancel.status_code, cancel.json()) == (
            409,
            {"code": "already_done", "detail": result.summary()},
        )
        assert result.summary().startswith("converted: sold 100.04 USD")

        same = await api.post(
            "/v1/fx/quotes", json={**body, "buy_currency": "USD"}, headers={"Idempotency-Key": "x"}
        )
        assert same.status_code == 422
        assert same.json()["detail"][0]["loc"] == ["body", "buy_currency"]
        refused = await api.post(
            "/v1/fx/quotes",
            json={**body, "sell_amount_minor": 5},
            headers={"Idempotency-Key": f"fx-{uuid.uuid4().hex[:8]}"},
        )
        # Refused by the program's policy, whether the answer comes from the
        # running process or from its result once it has ended.
        assert (refused.status_code, refused.json()["code"]) == (409, "not_allowed"), refused.text
        assert "below the minimum" in refused.json()["detail"]
        missing = await api.get("/v1/fx/nope")
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


# ----- inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"buy_currency": "USD"}, "buy_currency"),
        ({"buy_amount_minor": 100}, "buy_amount_minor"),
        ({"sell_amount_minor": None}, "buy_amount_minor"),
        ({"sell_amount_minor": 10.5}, "sell_amount_minor"),
        ({"sell_amount_minor": "100"}, "sell_amount_minor"),
        ({"sell_amount_minor": 0}, "sell_amount_minor"),
        ({"sell_amount_minor": 10**13}, "sell_amount_minor"),
        ({"sell_currency": "XXX"}, "sell_currency"),
        ({"request_id": "a/b"}, "request_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"policy": {"fee_bps": 5_000}}, "policy"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_conversion_input_is_refused_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    valid = {
        "request_id": "r-1",
        "customer_id": "c-1",
        "sell_currency": "USD",
        "buy_currency": "EUR",
        "sell_amount_minor": 100,
    }
    with pytest.raises(ValidationError) as refused:
        FxConversionInput.model_validate({**valid, **changes})
    assert refused.value.errors()[0]["loc"][0] == field


def test_the_policy_refuses_a_minimum_above_the_maximum() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        FxCurrencyTerms(sell_amount_min_minor=10, sell_amount_max_minor=9)


def test_the_cli_refuses_a_bad_quote_naming_the_field() -> None:
    from starters.cli import app

    answer = CliRunner().invoke(
        app, ["fx", "quote", "c-1", "--sell", "USD", "--buy", "usd", "--sell-amount", "100"]
    )
    assert answer.exit_code == 2
    assert "buy_currency" in answer.output
