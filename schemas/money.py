"""Money as integer minor units plus an ISO 4217 currency; rates as Decimal.

A float never carries money: `amount_minor` is a strict integer, so 10.5 or
"10.5" is rejected at the boundary instead of being silently rounded.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt


class Currency(StrEnum):
    """Currencies the program holds, with their minor-unit exponents below."""

    USD = "USD"
    EUR = "EUR"
    GBP = "GBP"
    JPY = "JPY"
    USDT = "USDT"


MINOR_UNIT_EXPONENT: dict[Currency, int] = {
    Currency.USD: 2,
    Currency.EUR: 2,
    Currency.GBP: 2,
    Currency.JPY: 0,
    Currency.USDT: 6,
}

# The largest amount cardflow takes anywhere (an authorization, a transfer, a
# top-up, a limit or fee): 10**15 minor units, ten trillion dollars or a
# billion USDT, beyond anything a prepaid card program moves at once. It stays
# below 2**53, so a JSON client in JavaScript (the WebApp) reads every amount
# exactly, and thousands of them still fit the ledger's bigint running totals
# (a total that would not is the ledger's balance_overflow rejection).
AMOUNT_MINOR_MAX = 10**15


class Money(BaseModel):
    """An amount in minor units (cents, micro-USDT) of one currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount_minor: Annotated[StrictInt, Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)]
    currency: Currency

    def is_positive(self) -> bool:
        return self.amount_minor > 0

    def __str__(self) -> str:
        exponent = MINOR_UNIT_EXPONENT[self.currency]
        units = Decimal(self.amount_minor).scaleb(-exponent)
        return f"{units:.{exponent}f} {self.currency.value}"


# A rate or ratio: Decimal in Python, a string in JSON so no binary float ever
# touches it on the wire or in a workflow history.
Rate = Annotated[
    Decimal,
    Field(gt=0, allow_inf_nan=False),
    PlainSerializer(lambda value: str(value), return_type=str, when_used="json"),
]
