"""Money is integer minor units with a currency; a float never gets in."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import issuer
from schemas.bank import InboundTransfer
from schemas.billing import BillingPolicy
from schemas.cards import AuthorizationRequest, CardIssuePolicy, CardPolicy, SpendingLimits
from schemas.cashback import CampaignRules, CashbackRefund
from schemas.disputes import DisputeRequest
from schemas.fx import FxConversionRequest, FxCurrencyTerms, FxQuote
from schemas.ledger import HoldRequest, HoldResolution, TransferRequest
from schemas.money import AMOUNT_MINOR_MAX, Currency, Money, Rate
from schemas.topup import (
    BankTopupRequest,
    DepositRequest,
    TopupFee,
    TopupLimits,
    UsageReservation,
)
from schemas.tron import Deposit


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


# Every model through which an amount enters cardflow: the API's and CLI's
# bodies, the issuer's real-time question and webhook payloads, the bank's and
# chain's records, the policies an operator sets, and the ledger's own commands.
ENTRY_POINT_MODELS: list[type[BaseModel]] = [
    AuthorizationRequest,
    SpendingLimits,
    CardIssuePolicy,
    CardPolicy,
    DisputeRequest,
    FxConversionRequest,
    FxQuote,
    FxCurrencyTerms,
    TopupFee,
    TopupLimits,
    BankTopupRequest,
    DepositRequest,
    UsageReservation,
    CashbackRefund,
    CampaignRules,
    BillingPolicy,
    InboundTransfer,
    Deposit,
    issuer.Authorization,
    issuer.Transaction,
    issuer.Reversal,
    issuer.Dispute,
    issuer.FundingDeposit,
    issuer.SettlementRecord,
    TransferRequest,
    HoldRequest,
    HoldResolution,
]


def _amount_fields(
    schema: dict[str, Any], defs: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, integer schema) of every *_minor integer, however nested."""
    for name, field in schema.get("properties", {}).items():
        for option in field.get("anyOf", [field]):
            yield from _amount_options(name, f"{path}{name}", option, defs)


def _amount_options(
    name: str, where: str, option: dict[str, Any], defs: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    if "$ref" in option:
        yield from _amount_fields(defs[option["$ref"].rsplit("/", 1)[1]], defs, f"{where}.")
    elif option.get("type") == "array":
        yield from _amount_options(name, f"{where}[*]", option.get("items", {}), defs)
    elif option.get("type") == "object" and "additionalProperties" in option:
        yield from _amount_options(name, f"{where}[*]", option["additionalProperties"], defs)
    elif option.get("type") == "integer" and name.endswith("_minor"):
        yield where, option


@pytest.mark.parametrize("model", ENTRY_POINT_MODELS, ids=lambda model: model.__name__)
def test_every_amount_an_entry_point_takes_is_bounded(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    fields = list(_amount_fields(schema, schema.get("$defs", {})))
    assert fields, f"{model.__name__} has no amount"
    unbounded = [
        where for where, field in fields if field.get("maximum", math.inf) > AMOUNT_MINOR_MAX
    ]
    assert unbounded == [], f"amounts of {model.__name__} a card program cannot move"


def test_the_largest_amount_is_one_a_card_program_moves_and_totals_can_sum() -> None:
    # JSON clients in JavaScript read every amount exactly, and many of the
    # largest amounts still fit the ledger's bigint totals.
    assert AMOUNT_MINOR_MAX < 2**53
    assert 1_000 * AMOUNT_MINOR_MAX < 2**63
