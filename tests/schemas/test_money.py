"""Money is integer minor units with a currency; a float never gets in."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from schemas.money import Currency, Money, Rate


@pytest.mark.parametrize("amount", [10.5, 10.0, "10", True, None])
def test_amount_must_be_a_strict_integer(amount: object) -> None:
    with pytest.raises(ValidationError) as error:
        Money(amount_minor=amount, currency="USD")  # type: ignore[arg-type]
    assert error.value.errors()[0]["loc"] == ("amount_minor",)


def test_unknown_currency_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        Money(amount_minor=1, currency="XXX")  # type: ignore[arg-type]
    assert error.value.errors()[0]["loc"] == ("currency",)


def test_money_renders_with_the_currency_exponent() -> None:
    assert str(Money(amount_minor=12345, currency=Currency.USD)) == "123.45 USD"
    assert str(Money(amount_minor=1_500_000, currency=Currency.USDT)) == "1.500000 USDT"
    assert str(Money(amount_minor=700, currency=Currency.JPY)) == "700 JPY"


class _Quote(BaseModel):
    rate: Rate


def test_rates_are_decimal_and_serialize_as_strings() -> None:
    quote = _Quote.model_validate_json('{"rate": "0.9231"}')
    assert quote.rate == Decimal("0.9231")
    assert quote.model_dump_json() == '{"rate":"0.9231"}'
    with pytest.raises(ValidationError):
        _Quote(rate=Decimal("0"))
    with pytest.raises(ValidationError):
        _Quote(rate=Decimal("NaN"))
