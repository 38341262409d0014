"""Top-up models refuse bad input naming the field; fees, limits and deposit
ordering behave as the policy says."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.money import Currency
from schemas.topup import (
    BankTopupRequest,
    DepositRequest,
    TopupFee,
    TopupInput,
    TopupLimits,
    TopupPolicy,
    TopupReview,
    deposit_rank,
)
from schemas.tron import Deposit
from starters.topup import parse_topup_id


def refused_fields(model: type[BaseModel], data: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as error:
        model.model_validate(data)
    return {".".join(str(part) for part in e["loc"]) for e in error.value.errors()}


@pytest.mark.parametrize("amount", [0, -5, 10.5, "100", "ten", None, 2**63])
def test_a_bank_top_up_refuses_an_amount_that_is_not_a_positive_integer(amount: Any) -> None:
    data = {"customer_id": "c-1", "amount_minor": amount, "currency": "USD"}
    assert refused_fields(BankTopupRequest, data) == {"amount_minor"}


@pytest.mark.parametrize("currency", ["usd", "XYZ", "", 840])
def test_a_bank_top_up_refuses_an_unknown_currency(currency: Any) -> None:
    data = {"customer_id": "c-1", "amount_minor": 100, "currency": currency}
    assert refused_fields(BankTopupRequest, data) == {"currency"}


def test_a_bank_transfer_is_never_in_usdt() -> None:
    data = {"customer_id": "c-1", "amount_minor": 100, "currency": "USDT"}
    assert refused_fields(BankTopupRequest, data) == {"currency"}


def test_a_bank_top_up_refuses_a_malformed_customer_id() -> None:
    data = {"customer_id": "c 1; drop", "amount_minor": 100}
    assert refused_fields(BankTopupRequest, data) == {"customer_id"}


def test_a_deposit_refuses_a_fractional_amount() -> None:
    assert refused_fields(DepositRequest, {"customer_id": "c-1", "amount_minor": 1.5}) == {
        "amount_minor"
    }


@pytest.mark.parametrize("source", ["card", "BANK", "", None])
def test_a_top_up_refuses_an_unknown_source(source: Any) -> None:
    assert refused_fields(TopupInput, {"source": source, "external_ref": "ibt_1"}) == {"source"}


@pytest.mark.parametrize("ref", ["", "a b", "x" * 129, "ibt/1"])
def test_a_top_up_refuses_a_malformed_external_ref(ref: str) -> None:
    assert refused_fields(TopupInput, {"source": "bank", "external_ref": ref}) == {"external_ref"}


def test_a_deposit_converts_into_a_fiat_wallet_only() -> None:
    data = {"source": "usdt", "external_ref": "ab" * 32, "wallet_currency": "USDT"}
    assert refused_fields(TopupInput, data) == {"wallet_currency"}


def test_a_top_up_refuses_unknown_fields_and_a_bad_policy() -> None:
    fields = refused_fields(
        TopupInput,
        {
            "source": "bank",
            "external_ref": "ibt_1",
            "amount": 5,
            "policy": {"confirmations_required": 0, "limits": {"XYZ": {}}},
        },
    )
    assert "amount" in fields
    assert "policy.confirmations_required" in fields
    assert any(field.startswith("policy.limits") for field in fields)


def test_limits_refuse_a_minimum_above_the_maximum() -> None:
    with pytest.raises(ValidationError, match="min_minor must not exceed max_minor"):
        TopupLimits(min_minor=500, max_minor=100, daily_max_minor=1_000)


def test_a_review_names_each_field_it_refuses() -> None:
    assert refused_fields(TopupReview, {"decision": "maybe", "reason": "ok", "operator": ""}) == {
        "decision",
        "reason",
        "operator",
    }


def test_the_fee_is_fixed_plus_basis_points_rounded_down_and_capped() -> None:
    fee = TopupFee(bps=20, fixed_minor={Currency.USD: 25})
    assert fee.fee_minor(10_000, Currency.USD) == 45
    assert fee.fee_minor(10_049, Currency.USD) == 45  # 20.098 bps part, rounded down
    assert fee.fee_minor(10_000, Currency.EUR) == 20  # no fixed part for EUR
    assert fee.fee_minor(10, Currency.USD) == 10  # never more than the credit
    assert TopupFee().fee_minor(10_000, Currency.USD) == 0
    assert TopupPolicy(fees={}).fee_minor("bank", 10_000, Currency.USD) == 0


def test_the_default_policy_has_limits_for_every_currency() -> None:
    assert set(TopupPolicy().limits) == set(Currency)


def _deposit(status: str, confirmations: int) -> Deposit:
    return Deposit(
        tx_hash="ab" * 32,
        address="T" + "1" * 33,
        customer_id="c-1",
        from_address="T" + "2" * 33,
        amount_minor=1,
        currency=Currency.USDT,
        block_number=1,
        confirmations=confirmations,
        finality_confirmations=19,
        status=status,  # type: ignore[arg-type]
        detected_at="2026-01-01T00:00:00Z",
    )


def test_a_deposit_snapshot_ranks_by_how_far_it_has_come() -> None:
    order = [
        _deposit("confirming", 0),
        _deposit("confirming", 6),
        _deposit("dropped", 0),
        _deposit("finalized", 19),
    ]
    assert sorted(reversed(order), key=deposit_rank) == order


def test_a_top_up_id_parses_with_or_without_its_prefix() -> None:
    assert parse_topup_id("topup/bank/ibt_000001") == ("bank", "ibt_000001")
    assert parse_topup_id("usdt/abc") == ("usdt", "abc")
    with pytest.raises(ValueError, match="not a top-up id"):
        parse_topup_id("topup/card/1")
