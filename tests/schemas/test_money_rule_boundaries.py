"""The money rules at their exact boundaries: a reward equal to its cap, a
reward of one unit, a limit with one unit left, the keys of every conversion
leg, the fee's preconditions, a policy's fee per source and currency, and a
final deposit ranked above a dropped one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas.cashback import evaluate, reward_minor
from schemas.conversion import conversion_legs
from schemas.fx import FxConversionResult, FxCurrencyTerms, FxOutcome, FxQuote, conversion_fee_minor
from schemas.money import Currency, Money
from schemas.topup import TopupFee, TopupPolicy, deposit_rank, describe
from tests.schemas.test_cashback import campaign, facts
from tests.schemas.test_conversion import CREDIT, DEBIT, KEY, make_quote
from tests.schemas.test_topup import _deposit

TERMS = FxCurrencyTerms(fee_fixed_minor=25, sell_amount_min_minor=1, sell_amount_max_minor=10**6)


# ----- cashback -------------------------------------------------------------------


def test_a_currency_without_a_minimum_pays_on_the_smallest_purchase() -> None:
    # 1 unit at 10,000 bp earns 1: no implicit minimum of one unit or more.
    paying = campaign(reward={"basis_points": 10_000})
    decision = evaluate([paying], facts(amount_minor=1), total_basis_points_max=10_000)
    assert decision.total_minor == 1


def test_a_reward_equal_to_its_cap_is_not_reported_capped() -> None:
    capped = campaign(reward={"cap_minor": {"USD": 100}})
    assert reward_minor(capped, facts(amount_minor=5_000)) == (100, False)
    assert reward_minor(capped, facts(amount_minor=5_050)) == (100, True)
    assert reward_minor(campaign(), facts(amount_minor=5_000)) == (100, False)


def test_a_reward_of_one_unit_is_paid_and_a_zero_reward_is_no_match() -> None:
    one = evaluate([campaign()], facts(amount_minor=50), total_basis_points_max=1_000)
    assert [line.amount_minor for line in one.rewards] == [1]
    assert one.rewards[0].capped is False
    assert [(v.matched, v.reason) for v in one.verdicts] == [(True, "best single reward")]
    zero = evaluate([campaign()], facts(amount_minor=49), total_basis_points_max=1_000)
    assert zero.rewards == []
    assert [(v.matched, v.reason) for v in zero.verdicts] == [
        (False, "the reward rounds down to zero")
    ]


def test_the_per_purchase_limit_pays_its_last_unit_then_refuses_every_later_campaign() -> None:
    stacked = [campaign(id=name, reward={"basis_points": 10, "stackable": True}) for name in "abc"]
    # 1,000 units at 10 bp each earn 1; the limit of 10 bp of 1,000 leaves exactly 1.
    decision = evaluate(stacked, facts(amount_minor=1_000), total_basis_points_max=10)
    assert [(line.campaign_id, line.amount_minor, line.capped) for line in decision.rewards] == [
        ("a", 1, False)
    ]
    assert [(v.campaign_id, v.matched, v.reason) for v in decision.verdicts] == [
        ("a", True, "stacked"),
        ("b", False, "the limit of 10 bp per purchase is reached"),
        ("c", False, "the limit of 10 bp per purchase is reached"),
    ]


# ----- FX -------------------------------------------------------------------------


def test_every_conversion_leg_is_keyed_by_its_role() -> None:
    # Ledger idempotency keys: a renamed leg would post twice across a deploy.
    quote = make_quote(Currency.USD, Currency.JPY, Decimal("149.53"), 30, sell_minor=12_357)
    assert quote is not None
    legs = conversion_legs(KEY, quote, debit=DEBIT, credit=CREDIT)
    assert [leg.key for leg in legs.transfers] == [
        f"{KEY}/sell",
        f"{KEY}/buy",
        f"{KEY}/spread",
        f"{KEY}/rounding",
    ]


@pytest.mark.parametrize(("amount", "bps"), [(0, 50), (-1, 50), (100, -1)])
def test_the_fee_is_never_computed_on_a_non_positive_amount_or_negative_bps(
    amount: int, bps: int
) -> None:
    with pytest.raises(AssertionError):
        conversion_fee_minor(amount, TERMS, bps)


def test_a_rate_given_as_a_float_is_refused_with_the_reason() -> None:
    quote = make_quote(Currency.USD, Currency.EUR, Decimal("0.92"), 30, sell_minor=10_000)
    assert quote is not None
    with pytest.raises(
        ValueError, match=r"Value error, a rate must be a decimal string, not a binary float \["
    ):
        FxQuote.model_validate({**quote.model_dump(), "rate": 0.9})


def test_a_conversion_summary_starts_with_its_outcome_once() -> None:
    def result(reason: str) -> FxConversionResult:
        return FxConversionResult(
            request_id="r1",
            customer_id="c1",
            outcome=FxOutcome.EXPIRED,
            reason=reason,
            sell_currency=Currency.USD,
            buy_currency=Currency.EUR,
        )

    assert result("the quote expired unconfirmed").summary() == (
        "expired: the quote expired unconfirmed"
    )
    assert result("expired: at 12:00").summary() == "expired: at 12:00"


# ----- money and top-ups --------------------------------------------------------------


def test_only_an_amount_above_zero_is_positive() -> None:
    assert [Money(amount_minor=n, currency=Currency.USD).is_positive() for n in (-1, 0, 1)] == [
        False,
        False,
        True,
    ]


def test_the_policy_charges_each_source_its_own_fee_in_the_credited_currency() -> None:
    policy = TopupPolicy(fees={"bank": TopupFee(bps=100, fixed_minor={Currency.EUR: 30})})
    assert policy.fee_minor("bank", 10_000, Currency.EUR) == 130
    assert policy.fee_minor("bank", 10_000, Currency.USD) == 100
    assert policy.fee_minor("usdt", 10_000, Currency.EUR) == 0


def test_amounts_are_described_in_units_with_their_currency() -> None:
    assert describe(1_234, Currency.USD) == "12.34 USD"
    assert describe(1_500_000, Currency.USDT) == "1.500000 USDT"


def test_a_finalized_deposit_outranks_a_dropped_one_whatever_its_confirmations() -> None:
    # The chain may call a deposit final before its count is reported.
    assert deposit_rank(_deposit("finalized", 0)) > deposit_rank(_deposit("dropped", 0))
