"""The legs of a conversion at a firm quote, and the conversion fee: exact to
the minor unit over random amounts and rates, checked against plain fractions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas import accounts
from schemas.conversion import conversion_accounts, conversion_legs
from schemas.fx import FxCurrencyTerms, FxFixedSide, FxQuote, FxQuoteStatus, conversion_fee_minor
from schemas.money import AMOUNT_MINOR_MAX as LEDGER_AMOUNT_MINOR_MAX
from schemas.money import MINOR_UNIT_EXPONENT, Currency

RATE_QUANTUM = Decimal("0.000001")
# The rate source's bounds: amounts up to 10**12 minor units, mid rates in
# [0.000001, 1_000_000] with six places, spreads up to 10%.
AMOUNT_MINOR_MAX = 10**12
KEY = "fx/r-1/conversion"
DEBIT = "customer:c-1:wallet:SELL"
CREDIT = "customer:c-1:wallet:BUY"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def minor_shift(sell: Currency, buy: Currency) -> Fraction:
    return Fraction(10) ** (MINOR_UNIT_EXPONENT[buy] - MINOR_UNIT_EXPONENT[sell])


def make_quote(
    sell: Currency,
    buy: Currency,
    mid: Decimal,
    spread_bps: int,
    *,
    sell_minor: int | None = None,
    buy_minor: int | None = None,
) -> FxQuote | None:
    """A quote the way the rate source makes one (rate truncated, computed side
    rounded against the customer), or None when it would refuse to quote."""
    with localcontext() as context:
        context.prec = 60
        rate = (mid * (10_000 - spread_bps) / 10_000).quantize(RATE_QUANTUM, rounding=ROUND_DOWN)
        if rate <= 0:
            return None
        shift = Decimal(10) ** (MINOR_UNIT_EXPONENT[buy] - MINOR_UNIT_EXPONENT[sell])
        if sell_minor is not None:
            fixed = FxFixedSide.SELL
            buy_minor = int((sell_minor * rate * shift).to_integral_value(rounding=ROUND_DOWN))
        else:
            assert buy_minor is not None
            fixed = FxFixedSide.BUY
            sell_minor = int((buy_minor / shift / rate).to_integral_value(rounding=ROUND_CEILING))
    if buy_minor <= 0 or sell_minor > AMOUNT_MINOR_MAX or buy_minor > LEDGER_AMOUNT_MINOR_MAX:
        return None
    return FxQuote(
        id="qt_000001",
        status=FxQuoteStatus.OPEN,
        sell_currency=sell,
        buy_currency=buy,
        fixed_side=fixed,
        sell_amount_minor=sell_minor,
        buy_amount_minor=buy_minor,
        rate=rate,
        mid_rate=mid,
        spread_bps=spread_bps,
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=30),
    )


currencies = st.sampled_from(list(Currency))
mids = st.integers(min_value=1, max_value=10**12).map(lambda n: Decimal(n) * RATE_QUANTUM)
spreads = st.integers(min_value=0, max_value=1_000)
amounts = st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX)


@settings(max_examples=400, deadline=None)
@given(
    sell=currencies,
    buy=currencies,
    mid=mids,
    spread_bps=spreads,
    amount=amounts,
    sell_fixed=st.booleans(),
)
def test_the_legs_sum_exactly_and_the_pool_pays_the_floor_at_mid(
    sell: Currency, buy: Currency, mid: Decimal, spread_bps: int, amount: int, sell_fixed: bool
) -> None:
    assume(sell is not buy)
    quote = make_quote(
        sell,
        buy,
        mid,
        spread_bps,
        sell_minor=amount if sell_fixed else None,
        buy_minor=None if sell_fixed else amount,
    )
    assume(quote is not None)
    assert quote is not None
    legs = conversion_legs(KEY, quote, debit=DEBIT, credit=CREDIT)

    # Every leg moves a positive whole amount.
    assert all(leg.amount_minor > 0 for leg in legs.transfers)
    assert legs.spread_minor >= 0 and legs.rounding_minor >= 0
    assert len({leg.key for leg in legs.transfers}) == len(legs.transfers)

    # The sell side: exactly the quoted amount, from the customer into the pool.
    sell_legs = [leg for leg in legs.transfers if leg.currency is sell]
    assert [(leg.debit, leg.credit, leg.amount_minor) for leg in sell_legs] == [
        (DEBIT, accounts.fx_pool(sell), quote.sell_amount_minor)
    ]

    # The buy side: the pool pays floor(sell x mid), all of it accounted for.
    exact_at_mid = Fraction(quote.sell_amount_minor) * Fraction(mid) * minor_shift(sell, buy)
    pool_out = math.floor(exact_at_mid)
    buy_legs = [leg for leg in legs.transfers if leg.currency is buy]
    assert all(leg.debit == accounts.fx_pool(buy) for leg in buy_legs)
    assert legs.pool_out_minor == pool_out
    assert sum(leg.amount_minor for leg in buy_legs) == pool_out
    paid = {leg.credit: leg.amount_minor for leg in buy_legs}
    assert paid[CREDIT] == quote.buy_amount_minor
    assert paid.get(accounts.revenue_fx(buy), 0) == legs.spread_minor
    assert paid.get(accounts.fx_rounding(buy), 0) == legs.rounding_minor
    spread_exact = (
        Fraction(quote.sell_amount_minor)
        * (Fraction(mid) - Fraction(quote.rate))
        * minor_shift(sell, buy)
    )
    assert legs.spread_minor == math.floor(spread_exact)
    assert set(paid) | {accounts.fx_pool(sell)} <= {CREDIT, *conversion_accounts(quote)}


def test_usd_to_jpy_and_back_round_to_the_unit() -> None:
    # 123.57 USD at 149.081410 (mid 149.53 less 30 bps) is 18,421.98... yen: 18,421.
    to_yen = make_quote(Currency.USD, Currency.JPY, Decimal("149.53"), 30, sell_minor=12_357)
    assert to_yen is not None and to_yen.buy_amount_minor == 18_421
    legs = conversion_legs(KEY, to_yen, debit=DEBIT, credit=CREDIT)
    # At mid it is 18,477.42 yen: the pool pays 18,477; the spread is 55.43
    # yen (55), and the two roundings leave 1 yen.
    assert (legs.pool_out_minor, legs.spread_minor, legs.rounding_minor) == (18_477, 55, 1)
    # 10,000 yen at 0.006666 (mid 0.006687 less 30 bps, truncated): 66.66 USD.
    to_dollars = make_quote(Currency.JPY, Currency.USD, Decimal("0.006687"), 30, sell_minor=10_000)
    assert to_dollars is not None and to_dollars.buy_amount_minor == 6_666
    back = conversion_legs(KEY, to_dollars, debit=DEBIT, credit=CREDIT)
    assert (back.pool_out_minor, back.spread_minor, back.rounding_minor) == (6_687, 21, 0)


def test_a_quote_paying_more_than_its_rate_is_refused() -> None:
    quote = make_quote(Currency.USD, Currency.EUR, Decimal("0.9231"), 30, sell_minor=10_000)
    assert quote is not None
    generous = quote.model_copy(update={"buy_amount_minor": quote.buy_amount_minor + 30})
    with pytest.raises(ValueError, match="more than its rate"):
        conversion_legs(KEY, generous, debit=DEBIT, credit=CREDIT)


@pytest.mark.parametrize(
    ("sell_minor", "fixed_minor", "fee_bps", "fee_minor"),
    [
        # 50 bps of 100.00 is exactly 0.50.
        (10_000, 25, 50, 75),
        # 50 bps of 100.01 is 0.50005: the basis-point part rounds UP to 0.51.
        (10_001, 25, 50, 76),
        # The smallest amount still pays a whole unit of the proportional fee.
        (1, 0, 50, 1),
        (1, 0, 0, 0),
        # JPY has no minor unit: 50 bps of 12,345 yen is 61.725 -> 62 yen.
        (12_345, 40, 50, 102),
    ],
)
def test_the_fee_is_fixed_plus_basis_points_rounded_up(
    sell_minor: int, fixed_minor: int, fee_bps: int, fee_minor: int
) -> None:
    terms = FxCurrencyTerms(
        fee_fixed_minor=fixed_minor, sell_amount_min_minor=1, sell_amount_max_minor=10**9
    )
    assert conversion_fee_minor(sell_minor, terms, fee_bps) == fee_minor


@settings(max_examples=200, deadline=None)
@given(sell_minor=amounts, fixed_minor=st.integers(0, 10**6), fee_bps=spreads)
def test_the_fee_is_never_below_the_exact_fee_nor_a_unit_above(
    sell_minor: int, fixed_minor: int, fee_bps: int
) -> None:
    terms = FxCurrencyTerms(
        fee_fixed_minor=fixed_minor, sell_amount_min_minor=1, sell_amount_max_minor=10**12
    )
    exact = fixed_minor + Fraction(sell_minor * fee_bps, 10_000)
    assert 0 <= conversion_fee_minor(sell_minor, terms, fee_bps) - exact < 1
