"""An FX rate source: firm quotes from a mid-rate table, less a spread.

    POST /fx/v1/quotes          quote selling one currency for another
    GET  /fx/v1/quotes/{id}     read a quote back (status expired after its TTL)

A quote fixes one side: the amount the customer sells (sell_amount_minor) or
the amount they buy (buy_amount_minor); the other side is computed from the
quoted rate. Rates are Decimal, on the wire as strings with RATE_DECIMAL_PLACES
places; amounts are integers in minor units. No float is used anywhere.

Rounding is explicit and always against the customer, so the provider never
gives away a fraction of a minor unit:
  - the quoted rate is mid * (1 - spread) truncated (ROUND_DOWN) to
    RATE_DECIMAL_PLACES, so the customer gets at most the spread-adjusted rate
    (for a small rate such as JPY/USD ~ 0.0067 the truncation is worth up to
    about 1.5 bps more, the price of a fixed number of places on the wire);
  - a computed buy amount is rounded down (the customer receives no more than
    sell * rate);
  - a computed sell amount is rounded up (the customer pays no less than
    buy / rate).

Options (admin API, `PUT /_admin/options/fx`):
    mid_rates           {"USD/EUR": "0.9231", ...}: units of the second currency
                        per unit of the first, as decimal strings; they take
                        precedence over the built-in table, and each also
                        answers its inverse pair (1 / rate) unless that pair is
                        given too
    spread_bps          integer basis points taken from the mid rate (default 25)
    quote_ttl_seconds   integer seconds a quote stays open (default 30)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, Inexact, InvalidOperation, localcontext
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from schemas.money import AMOUNT_MINOR_MAX, MINOR_UNIT_EXPONENT, Currency, Rate
from schemas.units import BASIS_POINTS_PER_UNIT
from simulators.framework.context import SimulatorContext

NAME = "fx"

RATE_DECIMAL_PLACES = 6
RATE_QUANTUM = Decimal(1).scaleb(-RATE_DECIMAL_PLACES)
# Enough significant digits that every amount computation below is exact
# (amounts of at most 13 digits, QUOTE_AMOUNT_MINOR_MAX, times rates of at most
# 13, MID_RATE_MAX with RATE_DECIMAL_PLACES) and an inverse mid rate is precise
# far beyond RATE_DECIMAL_PLACES.
DECIMAL_PRECISION_DIGITS = 50
SPREAD_BPS_DEFAULT = 25
# A spread above 10% is no longer a quote but a mistake in the options.
SPREAD_BPS_MAX = 1_000
QUOTE_TTL_SECONDS_DEFAULT = 30
QUOTE_TTL_SECONDS_MAX = 3_600
# The largest amount one quote may fix: 10**12 minor units is ten billion
# dollars or a million USDT, far above any prepaid-card conversion.
QUOTE_AMOUNT_MINOR_MAX = 10**12
# A configured mid rate must stay within this range; outside it is a typo.
MID_RATE_MIN = Decimal("0.000001")
MID_RATE_MAX = Decimal("1000000")

QUOTES = "fx.quote"

# Mid rates, units of the second currency per unit of the first. One entry per
# unordered pair; the inverse pair is answered with 1 / rate, so the two
# directions can never disagree.
DEFAULT_MID_RATES: dict[tuple[Currency, Currency], Decimal] = {
    (Currency.USD, Currency.EUR): Decimal("0.923100"),
    (Currency.USD, Currency.GBP): Decimal("0.787400"),
    (Currency.USD, Currency.JPY): Decimal("149.500000"),
    # USDT is pegged to the dollar; a stablecoin desk quotes it at par.
    (Currency.USD, Currency.USDT): Decimal("1.000000"),
    (Currency.EUR, Currency.GBP): Decimal("0.853000"),
    (Currency.EUR, Currency.JPY): Decimal("161.950000"),
    (Currency.EUR, Currency.USDT): Decimal("1.083300"),
    (Currency.GBP, Currency.JPY): Decimal("189.860000"),
    (Currency.GBP, Currency.USDT): Decimal("1.270000"),
    (Currency.USDT, Currency.JPY): Decimal("149.500000"),
}

FixedSide = Literal["sell", "buy"]
QuoteStatus = Literal["open", "expired"]


class QuoteIn(BaseModel):
    """What to quote; exactly one of the two amounts is given."""

    model_config = ConfigDict(extra="forbid")

    sell_currency: Currency
    # Validated after sell_currency, against it.
    buy_currency: Currency
    sell_amount_minor: StrictInt | None = Field(default=None, gt=0, le=QUOTE_AMOUNT_MINOR_MAX)
    # Validated last, even when left out, to check that exactly one amount is given.
    buy_amount_minor: StrictInt | None = Field(
        default=None, gt=0, le=QUOTE_AMOUNT_MINOR_MAX, validate_default=True
    )

    @field_validator("buy_currency")
    @classmethod
    def _two_currencies(cls, value: Currency, info: ValidationInfo) -> Currency:
        if value == info.data.get("sell_currency"):
            raise ValueError("buy_currency must differ from sell_currency")
        return value

    @field_validator("buy_amount_minor")
    @classmethod
    def _exactly_one_amount(cls, value: int | None, info: ValidationInfo) -> int | None:
        # An invalid sell_amount_minor is reported on its own; don't pile on.
        if "sell_amount_minor" not in info.data:
            return value
        if (info.data["sell_amount_minor"] is None) == (value is None):
            raise ValueError("give exactly one of sell_amount_minor and buy_amount_minor")
        return value


class Quote(BaseModel):
    id: str
    status: QuoteStatus
    sell_currency: Currency
    buy_currency: Currency
    fixed_side: FixedSide
    sell_amount_minor: int
    buy_amount_minor: int
    # Units of buy_currency per unit of sell_currency, after the spread.
    rate: Rate
    mid_rate: Rate
    spread_bps: int
    created_at: datetime
    expires_at: datetime


def _misconfigured(detail: str) -> HTTPException:
    # The simulator's options are wrong, not the request: a server error.
    return HTTPException(status_code=500, detail=detail)


def _unquotable(field: str, message: str) -> HTTPException:
    """A 422 shaped like a validation error, naming the amount that cannot be quoted."""
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": ["body", field], "msg": f"{field}: {message}"}],
    )


def _parse_pair(key: str) -> tuple[Currency, Currency]:
    sell, _, buy = key.partition("/")
    try:
        return Currency(sell), Currency(buy)
    except ValueError:
        raise _misconfigured(f"option fx.mid_rates key {key!r} is not SELL/BUY") from None


def _parse_rate(key: str, value: Any) -> Decimal:
    # A float would already have lost the rate's exact value.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _misconfigured(f"option fx.mid_rates[{key}] must be a decimal string")
    try:
        rate = Decimal(value)
    except InvalidOperation:
        raise _misconfigured(f"option fx.mid_rates[{key}] is not a decimal: {value!r}") from None
    if not MID_RATE_MIN <= rate <= MID_RATE_MAX:
        raise _misconfigured(
            f"option fx.mid_rates[{key}] = {value} is outside [{MID_RATE_MIN}, {MID_RATE_MAX}]"
        )
    return rate


def _int_option(context: SimulatorContext, name: str, default: int, low: int, high: int) -> int:
    value = context.option(NAME, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _misconfigured(f"option fx.{name} must be an integer in [{low}, {high}]")
    return value


def mid_rate(
    overrides: dict[tuple[Currency, Currency], Decimal], sell: Currency, buy: Currency
) -> Decimal:
    """Units of `buy` per unit of `sell` at mid: a configured rate for the pair
    or its inverse first, then the built-in table's."""
    for table in (overrides, DEFAULT_MID_RATES):
        if (sell, buy) in table:
            return table[(sell, buy)]
        if (buy, sell) in table:
            with localcontext() as exact:
                exact.prec = DECIMAL_PRECISION_DIGITS
                return 1 / table[(buy, sell)]
    # DEFAULT_MID_RATES covers every pair of Currency; reaching here means a
    # currency was added without a rate.
    raise _misconfigured(f"no mid rate for {sell.value}/{buy.value}")


def customer_rate(mid: Decimal, spread_bps: int) -> Decimal:
    """The mid rate less the spread, truncated: never better than mid - spread."""
    with localcontext() as exact:
        exact.prec = DECIMAL_PRECISION_DIGITS
        return (mid * (BASIS_POINTS_PER_UNIT - spread_bps) / BASIS_POINTS_PER_UNIT).quantize(
            RATE_QUANTUM, rounding=ROUND_DOWN
        )


def quote_amounts(
    sell: Currency,
    buy: Currency,
    rate: Decimal,
    sell_amount_minor: int | None,
    buy_amount_minor: int | None,
) -> tuple[int, int]:
    """(sell_amount_minor, buy_amount_minor) at `rate`, the computed side rounded
    against the customer: buy down, sell up."""
    # Minor units of buy per minor unit of sell differ from the rate by the
    # exponents: 1 USD cent buys rate * 10**(6 - 2) micro-USDT.
    shift = MINOR_UNIT_EXPONENT[buy] - MINOR_UNIT_EXPONENT[sell]
    with localcontext() as exact:
        exact.prec = DECIMAL_PRECISION_DIGITS
        # Every operation here must be exact; the only rounding is the one
        # chosen explicitly below.
        exact.traps[Inexact] = True
        if sell_amount_minor is not None:
            bought = (Decimal(sell_amount_minor) * rate).scaleb(shift)
            return sell_amount_minor, int(bought.to_integral_value(rounding=ROUND_DOWN))
        assert buy_amount_minor is not None  # QuoteIn guarantees exactly one amount
        # divmod gives the exact integral quotient and remainder; any remainder
        # means the customer must sell one more minor unit to cover the buy.
        whole, remainder = divmod(Decimal(buy_amount_minor).scaleb(-shift), rate)
        return int(whole) + (1 if remainder else 0), buy_amount_minor


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="FX rate source (simulated)")
    store = context.store

    def configured_mid_rates() -> dict[tuple[Currency, Currency], Decimal]:
        configured = context.option(NAME, "mid_rates", {})
        if not isinstance(configured, dict):
            raise _misconfigured("option fx.mid_rates must be an object of SELL/BUY: rate")
        return {_parse_pair(key): _parse_rate(key, value) for key, value in configured.items()}

    def as_of_now(quote: Quote) -> Quote:
        if quote.status == "open" and datetime.now(UTC) >= quote.expires_at:
            return quote.model_copy(update={"status": "expired"})
        return quote

    @app.post("/v1/quotes", status_code=201)
    async def create_quote(body: QuoteIn) -> Quote:
        """A firm quote, open for quote_ttl_seconds. 422 when the computed
        side rounds to nothing or exceeds what an amount can carry."""
        spread_bps = _int_option(context, "spread_bps", SPREAD_BPS_DEFAULT, 0, SPREAD_BPS_MAX)
        ttl_seconds = _int_option(
            context, "quote_ttl_seconds", QUOTE_TTL_SECONDS_DEFAULT, 1, QUOTE_TTL_SECONDS_MAX
        )
        mid = mid_rate(configured_mid_rates(), body.sell_currency, body.buy_currency)
        rate = customer_rate(mid, spread_bps)
        if rate <= 0:
            raise _misconfigured(
                f"the {body.sell_currency.value}/{body.buy_currency.value} rate after the"
                f" spread is below {RATE_QUANTUM}"
            )
        sell_amount_minor, buy_amount_minor = quote_amounts(
            body.sell_currency,
            body.buy_currency,
            rate,
            body.sell_amount_minor,
            body.buy_amount_minor,
        )
        fixed_side: FixedSide = "sell" if body.sell_amount_minor is not None else "buy"
        fixed_field = f"{fixed_side}_amount_minor"
        if buy_amount_minor == 0:
            raise _unquotable(
                fixed_field,
                f"{sell_amount_minor} buys less than one minor unit of"
                f" {body.buy_currency.value} at {rate}",
            )
        if sell_amount_minor > AMOUNT_MINOR_MAX or buy_amount_minor > AMOUNT_MINOR_MAX:
            raise _unquotable(
                fixed_field, f"the other side exceeds the largest amount, {AMOUNT_MINOR_MAX}"
            )
        created_at = datetime.now(UTC)
        quote = Quote(
            id=f"qt_{store.next_number(QUOTES):06d}",
            status="open",
            sell_currency=body.sell_currency,
            buy_currency=body.buy_currency,
            fixed_side=fixed_side,
            sell_amount_minor=sell_amount_minor,
            buy_amount_minor=buy_amount_minor,
            rate=rate,
            mid_rate=mid.quantize(RATE_QUANTUM),
            spread_bps=spread_bps,
            created_at=created_at,
            expires_at=created_at + timedelta(seconds=ttl_seconds),
        )
        store.put(QUOTES, quote.id, quote.model_dump(mode="json"))
        return quote

    @app.get("/v1/quotes/{quote_id}")
    async def get_quote(quote_id: str) -> Quote:
        """The quote as created; status is expired from expires_at on."""
        found = store.get(QUOTES, quote_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no quote {quote_id}")
        return as_of_now(Quote(**found))

    return app
