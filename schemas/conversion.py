"""The ledger legs of one currency conversion at a firm quote.

The FX pools stand between the two currencies: the seller's side pays the
sell amount into `fx:pool:{sell}`, and `fx:pool:{buy}` pays out the sell
amount's worth at the mid rate, rounded down to the unit, split three ways:
the buy amount to the receiving account, the spread (mid less quoted rate,
rounded down) to `revenue:fx:{buy}`, and whatever the two roundings left to
`fx:rounding:{buy}`. Every leg is a whole number of minor units, so each
currency balances to the unit, and the pool is always measured at mid.
Deterministic and pure: workflows build their batches with it.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, localcontext

from pydantic import BaseModel, ConfigDict

from schemas import accounts
from schemas.fx import FxQuote
from schemas.ledger import TransferRequest
from schemas.money import MINOR_UNIT_EXPONENT

# Enough digits for any amount the ledger takes times any sane rate, exactly.
DECIMAL_DIGITS = 60


class ConversionLegs(BaseModel):
    model_config = ConfigDict(frozen=True)

    transfers: list[TransferRequest]
    pool_out_minor: int
    spread_minor: int
    rounding_minor: int


def _minor_at(rate: Decimal, quote: FxQuote) -> Decimal:
    """The sell amount in minor units of the buy currency at `rate`, exact."""
    shift = MINOR_UNIT_EXPONENT[quote.buy_currency] - MINOR_UNIT_EXPONENT[quote.sell_currency]
    return (Decimal(quote.sell_amount_minor) * rate).scaleb(shift)


def conversion_legs(key: str, quote: FxQuote, *, debit: str, credit: str) -> ConversionLegs:
    """Transfers that move quote.sell_amount_minor out of `debit` and
    quote.buy_amount_minor into `credit`, keyed `{key}/sell`, `{key}/buy`,
    `{key}/spread` and `{key}/rounding` (legs of zero are left out)."""
    with localcontext() as context:
        context.prec = DECIMAL_DIGITS
        at_mid = _minor_at(quote.mid_rate, quote)
        at_rate = _minor_at(quote.rate, quote)
        pool_out = int(at_mid.to_integral_value(rounding=ROUND_FLOOR))
        spread = int((at_mid - at_rate).to_integral_value(rounding=ROUND_FLOOR))
    rounding = pool_out - quote.buy_amount_minor - spread
    # The quote never gives more than its own rate allows (the buy side is
    # rounded down, or the sell side up), and the rate never beats mid.
    if spread < 0 or rounding < 0:
        raise ValueError(
            f"quote {quote.id} pays {quote.buy_amount_minor} for {quote.sell_amount_minor}, "
            f"more than its rate {quote.rate} or mid {quote.mid_rate} allows"
        )
    sell, buy = quote.sell_currency, quote.buy_currency
    legs = [
        TransferRequest(
            key=f"{key}/sell",
            debit=debit,
            credit=accounts.fx_pool(sell),
            amount_minor=quote.sell_amount_minor,
            currency=sell,
        ),
        TransferRequest(
            key=f"{key}/buy",
            debit=accounts.fx_pool(buy),
            credit=credit,
            amount_minor=quote.buy_amount_minor,
            currency=buy,
        ),
    ]
    for leg, account, amount in (
        ("spread", accounts.revenue_fx(buy), spread),
        ("rounding", accounts.fx_rounding(buy), rounding),
    ):
        if amount > 0:
            legs.append(
                TransferRequest(
                    key=f"{key}/{leg}",
                    debit=accounts.fx_pool(buy),
                    credit=account,
                    amount_minor=amount,
                    currency=buy,
                )
            )
    assert sum(t.amount_minor for t in legs if t.currency == buy) == pool_out
    return ConversionLegs(
        transfers=legs, pool_out_minor=pool_out, spread_minor=spread, rounding_minor=rounding
    )


def conversion_accounts(quote: FxQuote) -> list[str]:
    """The system accounts a conversion at this quote touches."""
    return [
        accounts.fx_pool(quote.sell_currency),
        accounts.fx_pool(quote.buy_currency),
        accounts.revenue_fx(quote.buy_currency),
        accounts.fx_rounding(quote.buy_currency),
    ]
