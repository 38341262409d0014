"""The FX simulator: quote math exact to the minor unit, read-back, expiry, no floats."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal, localcontext
from typing import Any

import httpx
import pytest

# Mid rates the tests set, so the expected amounts below do not depend on the
# simulator's built-in table. Units of the second currency per first.
MID_RATES = {
    "USD/EUR": "0.9231",
    "GBP/USD": "1.2712",
    "USD/JPY": "149.53",
    "USDT/USD": "0.9998",
    "EUR/GBP": "0.8530",
}
SPREAD_BPS = 30
EXPONENT = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "USDT": 6}
CURRENCIES = list(EXPONENT)
RATE_PATTERN = re.compile(r"^\d+\.\d{6}$")
# Far more digits than any value here needs, so the expectations are exact.
PRECISION_DIGITS = 80
EXPIRY_POLL_INTERVAL_SECONDS = 0.05


@pytest.fixture
async def fx(sim: Any) -> AsyncIterator[httpx.AsyncClient]:
    sim.admin("PUT", "/options/fx", {"mid_rates": MID_RATES, "spread_bps": SPREAD_BPS})
    async with httpx.AsyncClient(base_url=sim.provider_url("fx"), timeout=5) as client:
        yield client


def expected_rate(sell: str, buy: str) -> Decimal:
    """mid less SPREAD_BPS, truncated to six places (against the customer)."""
    with localcontext() as context:
        context.prec = PRECISION_DIGITS
        if f"{sell}/{buy}" in MID_RATES:
            mid = Decimal(MID_RATES[f"{sell}/{buy}"])
        else:
            mid = Decimal(1) / Decimal(MID_RATES[f"{buy}/{sell}"])
        after_spread = mid * (1 - Decimal(SPREAD_BPS) / 10_000)
        return after_spread.quantize(Decimal("0.000001"), rounding=ROUND_DOWN)


def expected_buy_minor(sell: str, buy: str, sell_minor: int) -> int:
    """What selling sell_minor buys at the quoted rate, in whole minor units, rounded down."""
    with localcontext() as context:
        context.prec = PRECISION_DIGITS
        sell_units = Decimal(sell_minor) / 10 ** EXPONENT[sell]
        buy_minor = sell_units * expected_rate(sell, buy) * 10 ** EXPONENT[buy]
        return int(buy_minor.to_integral_value(rounding=ROUND_DOWN))


def expected_sell_minor(sell: str, buy: str, buy_minor: int) -> int:
    """What buying buy_minor costs at the quoted rate, in whole minor units, rounded up."""
    with localcontext() as context:
        context.prec = PRECISION_DIGITS
        buy_units = Decimal(buy_minor) / 10 ** EXPONENT[buy]
        sell_minor = buy_units / expected_rate(sell, buy) * 10 ** EXPONENT[sell]
        return int(sell_minor.to_integral_value(rounding=ROUND_CEILING))


def no_floats(text: str) -> Any:
    """Parse JSON, failing on any number with a fraction or an exponent."""

    def refuse(literal: str) -> Any:
        raise AssertionError(f"a float in the response: {literal}")

    return json.loads(text, parse_float=refuse)


async def quote(fx: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await fx.post("/v1/quotes", json=body)


@pytest.mark.parametrize(
    ("sell", "buy", "sell_minor"),
    [
        ("USD", "EUR", 10_000),
        ("EUR", "USD", 12_345),
        ("JPY", "USD", 1_000_000),
        ("USD", "JPY", 99),
        ("USDT", "USD", 1_234_567),
        ("USD", "USDT", 1),
        ("GBP", "EUR", 50_001),
    ],
)
async def test_a_sell_side_quote_buys_the_exact_amount_rounded_down(
    fx: httpx.AsyncClient, sell: str, buy: str, sell_minor: int
) -> None:
    response = await quote(fx, sell_currency=sell, buy_currency=buy, sell_amount_minor=sell_minor)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["fixed_side"] == "sell" and created["spread_bps"] == SPREAD_BPS
    assert Decimal(created["rate"]) == expected_rate(sell, buy)
    assert created["sell_amount_minor"] == sell_minor
    assert created["buy_amount_minor"] == expected_buy_minor(sell, buy, sell_minor)


@pytest.mark.parametrize(
    ("sell", "buy", "buy_minor"),
    [
        ("USD", "EUR", 10_000),
        ("EUR", "USD", 10_000),
        ("USD", "JPY", 1_500_000),
        ("JPY", "USD", 1),
        ("USD", "USDT", 250_000_000),
        ("GBP", "USD", 9_999),
        ("EUR", "GBP", 777),
    ],
)
async def test_a_buy_side_quote_costs_the_exact_amount_rounded_up(
    fx: httpx.AsyncClient, sell: str, buy: str, buy_minor: int
) -> None:
    response = await quote(fx, sell_currency=sell, buy_currency=buy, buy_amount_minor=buy_minor)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["fixed_side"] == "buy"
    assert Decimal(created["rate"]) == expected_rate(sell, buy)
    assert created["buy_amount_minor"] == buy_minor
    assert created["sell_amount_minor"] == expected_sell_minor(sell, buy, buy_minor)


async def test_the_built_in_table_quotes_usd_to_eur_at_mid_less_25_bps(sim: Any) -> None:
    async with httpx.AsyncClient(base_url=sim.provider_url("fx")) as fx:
        response = await quote(
            fx, sell_currency="USD", buy_currency="EUR", sell_amount_minor=10_000
        )
    assert response.status_code == 201, response.text
    created = response.json()
    # 0.9231 * (1 - 0.0025) = 0.92079225, truncated; $100.00 buys 92.0792 EUR.
    assert created["mid_rate"] == "0.923100" and created["spread_bps"] == 25
    assert created["rate"] == "0.920792" and created["buy_amount_minor"] == 9_207


async def test_the_built_in_table_quotes_every_pair_both_ways(sim: Any) -> None:
    mids: dict[tuple[str, str], Decimal] = {}
    async with httpx.AsyncClient(base_url=sim.provider_url("fx")) as fx:
        for sell, buy in itertools.permutations(CURRENCIES, 2):
            response = await quote(
                fx, sell_currency=sell, buy_currency=buy, sell_amount_minor=10**7
            )
            assert response.status_code == 201, (sell, buy, response.text)
            created = response.json()
            assert Decimal(created["rate"]) < Decimal(created["mid_rate"])
            mids[(sell, buy)] = Decimal(created["mid_rate"])
    # Each direction is the inverse of the other: the product of the two shown
    # rates is 1 but for the rounding of each to six places (half a unit of the
    # sixth place, scaled by the other rate).
    half_quantum = Decimal("0.0000005")
    for (sell, buy), mid in mids.items():
        inverse = mids[(buy, sell)]
        assert abs(mid * inverse - 1) <= half_quantum * (mid + inverse), (sell, buy)


async def test_a_zero_spread_quotes_at_mid(sim: Any, fx: httpx.AsyncClient) -> None:
    sim.admin("PUT", "/options/fx", {"spread_bps": 0})
    response = await quote(fx, sell_currency="USD", buy_currency="EUR", sell_amount_minor=10_000)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["rate"] == created["mid_rate"] == "0.923100"
    assert created["buy_amount_minor"] == 9_231


async def test_no_float_appears_in_any_response(fx: httpx.AsyncClient) -> None:
    created = await quote(fx, sell_currency="JPY", buy_currency="USDT", buy_amount_minor=10**6)
    assert created.status_code == 201, created.text
    fetched = await fx.get(f"/v1/quotes/{created.json()['id']}")
    assert fetched.status_code == 200, fetched.text
    for response in (created, fetched):
        body = no_floats(response.text)
        assert isinstance(body["rate"], str) and RATE_PATTERN.match(body["rate"])
        assert isinstance(body["mid_rate"], str) and RATE_PATTERN.match(body["mid_rate"])
        assert isinstance(body["sell_amount_minor"], int)
        assert isinstance(body["buy_amount_minor"], int)


async def test_a_quote_is_read_back_by_id_and_expires_after_its_ttl(
    sim: Any, fx: httpx.AsyncClient
) -> None:
    sim.admin("PUT", "/options/fx", {"quote_ttl_seconds": 1})
    response = await quote(fx, sell_currency="GBP", buy_currency="JPY", sell_amount_minor=2_500)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"] == "qt_000001" and created["status"] == "open"
    expires_at = datetime.fromisoformat(created["expires_at"])
    assert (expires_at - datetime.fromisoformat(created["created_at"])).total_seconds() == 1

    # Read back until the simulator answers expired. It reads the clock this test
    # reads, so each answer is judged by when it was asked and answered, however
    # loaded the machine: open only when asked before expires_at (an open answer
    # to a read asked later fails the test, so the loop ends about a second in),
    # expired only when answered from expires_at on.
    while True:
        asked_at = datetime.now(UTC)
        found = await fx.get(f"/v1/quotes/{created['id']}")
        answered_at = datetime.now(UTC)
        assert found.status_code == 200, found.text
        if found.json()["status"] != "open":
            break
        assert found.json() == created
        assert asked_at < expires_at, f"still open when asked at {asked_at}, after {expires_at}"
        await asyncio.sleep(EXPIRY_POLL_INTERVAL_SECONDS)
    assert found.json() == {**created, "status": "expired"}
    assert answered_at >= expires_at, f"expired at {answered_at}, before its {expires_at}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "sell_currency": "USD",
                "buy_currency": "EUR",
                "sell_amount_minor": 1,
                "buy_amount_minor": 1,
            },
            "buy_amount_minor",
        ),
        ({"sell_currency": "USD", "buy_currency": "EUR"}, "buy_amount_minor"),
        ({"sell_currency": "USD", "buy_currency": "USD", "sell_amount_minor": 100}, "buy_currency"),
        (
            {"sell_currency": "XXX", "buy_currency": "EUR", "sell_amount_minor": 100},
            "sell_currency",
        ),
        (
            {"sell_currency": "USD", "buy_currency": "EUR", "sell_amount_minor": 10.5},
            "sell_amount_minor",
        ),
        (
            {"sell_currency": "USD", "buy_currency": "EUR", "sell_amount_minor": "100"},
            "sell_amount_minor",
        ),
        (
            {"sell_currency": "USD", "buy_currency": "EUR", "sell_amount_minor": 0},
            "sell_amount_minor",
        ),
        (
            {"sell_currency": "USD", "buy_currency": "EUR", "buy_amount_minor": 10**13},
            "buy_amount_minor",
        ),
        # 1 yen buys 0.0067 dollars: less than a cent.
        (
            {"sell_currency": "JPY", "buy_currency": "USD", "sell_amount_minor": 1},
            "sell_amount_minor",
        ),
    ],
)
async def test_a_bad_quote_request_gets_a_422_naming_the_field(
    fx: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await fx.post("/v1/quotes", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


async def test_an_unknown_quote_is_404(fx: httpx.AsyncClient) -> None:
    response = await fx.get("/v1/quotes/qt_999999")
    assert response.status_code == 404 and response.json() == {"detail": "no quote qt_999999"}
