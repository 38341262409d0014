"""The fraud scoring rules on their own: thresholds, windows and the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas.fraud import (
    SCORE_MAX,
    CardTransactionFact,
    CustomerFacts,
    FraudDecision,
    FraudPolicy,
    SignalName,
    TopupFact,
    UsdtSourceFact,
    score_customer,
)

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
SINCE = NOW - timedelta(days=7)


def facts(**fields: object) -> CustomerFacts:
    return CustomerFacts.model_validate(
        {
            "customer_id": "c-1",
            "since": SINCE,
            "until": NOW,
            "context_since": SINCE - timedelta(days=30),
            **fields,
        }
    )


def txn(n: int, at: datetime, amount: int = 300, **fields: object) -> CardTransactionFact:
    return CardTransactionFact.model_validate(
        {
            "transaction_id": f"t{n}",
            "card_id": "card_1",
            "kind": "clearing",
            "amount_minor": amount,
            "currency": "USD",
            "merchant_name": "Shop",
            "occurred_at": at,
            **fields,
        }
    )


def test_a_signal_scores_its_weight_only_from_its_threshold() -> None:
    start = NOW - timedelta(hours=2)
    four = [txn(n, start + timedelta(minutes=n)) for n in range(4)]
    assert score_customer(facts(transactions=four), FraudPolicy()).score == 0
    five = [*four, txn(9, start + timedelta(minutes=9))]
    scored = score_customer(facts(transactions=five), FraudPolicy())
    assert scored.score == 30
    assert [(s.name, s.count) for s in scored.signals] == [(SignalName.CASHBACK_FARMING, 5)]


def test_purchases_before_the_window_or_spread_over_more_than_the_stretch_do_not_farm() -> None:
    spread = [txn(n, NOW - timedelta(hours=n + 1)) for n in range(5)]
    assert score_customer(facts(transactions=spread), FraudPolicy()).score == 0
    before = [txn(n, SINCE - timedelta(minutes=n + 1)) for n in range(5)]
    assert score_customer(facts(transactions=before), FraudPolicy()).score == 0


def test_a_refund_of_a_rewarded_purchase_after_the_policys_days_does_not_count() -> None:
    bought = NOW - timedelta(days=10)
    purchase = txn(1, bought, 5_000, rewarded_minor=100)
    late = txn(2, NOW - timedelta(hours=1), 5_000, kind="refund", refunded_transaction_id="t1")
    policy = FraudPolicy.model_validate({"refund_after_reward": {"min_count": 1}})
    assert score_customer(facts(transactions=[purchase, late]), policy).score == 0
    soon = txn(3, bought + timedelta(days=2), 5_000, rewarded_minor=100)
    refund = txn(4, NOW - timedelta(hours=1), 5_000, kind="refund", refunded_transaction_id="t3")
    soon = soon.model_copy(update={"occurred_at": NOW - timedelta(days=3)})
    assert score_customer(facts(transactions=[soon, refund]), policy).score == 30


def test_the_score_is_capped_and_every_signal_keeps_its_evidence() -> None:
    start = NOW - timedelta(hours=2)
    farmed = [txn(n, start + timedelta(minutes=n)) for n in range(5)]
    policy = FraudPolicy.model_validate(
        {
            "cashback_farming": {"weight": 80},
            "new_usdt_sources": {"min_count": 1, "weight": 80},
        }
    )
    source = UsdtSourceFact(
        from_address="T" + "1" * 33, first_tx_hash="h1", first_seen_at=NOW - timedelta(hours=1)
    )
    scored = score_customer(facts(transactions=farmed, usdt_sources=[source]), policy)
    assert scored.score == SCORE_MAX
    assert {s.name: s.evidence for s in scored.signals} == {
        SignalName.CASHBACK_FARMING: [f"t{n}" for n in range(5)],
        SignalName.NEW_USDT_SOURCES: ["T" + "1" * 33],
    }


def test_a_dispute_counts_only_on_spend_within_the_stretch_after_a_top_up() -> None:
    spend = txn(1, NOW - timedelta(hours=5), 9_000)
    topup = TopupFact(
        topup_id="topup/bank/x", amount_minor=9_000, currency="USD", credited_at=spend.occurred_at
    )
    early = topup.model_copy(update={"credited_at": spend.occurred_at - timedelta(days=2)})
    dispute = {"transaction_id": "t1", "opened_at": NOW - timedelta(hours=1)}
    assert (
        score_customer(
            facts(transactions=[spend], topups=[topup], disputes=[dispute]), FraudPolicy()
        ).score
        == 40
    )
    assert (
        score_customer(
            facts(transactions=[spend], topups=[early], disputes=[dispute]), FraudPolicy()
        ).score
        == 0
    )


def test_a_decision_closes_cards_only_when_it_confirms() -> None:
    with pytest.raises(ValidationError, match="close_cards"):
        FraudDecision(action="clear", close_cards=True, reason="fine", operator="ops")
    FraudDecision(action="confirm", close_cards=True, reason="fraud", operator="ops")
