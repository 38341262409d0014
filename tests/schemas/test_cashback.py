"""The cashback rules engine: each rule dimension, several matches, rounding,
caps and clawback, and the campaign file's validation (errors name the field)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.cashback import (
    Campaign,
    CampaignFile,
    CashbackRefund,
    CustomerFacts,
    PurchaseFacts,
    RecentPurchases,
    campaign_mismatch,
    clawback_target_minor,
    evaluate,
    offered,
)
from schemas.money import Currency
from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
WEEK_SECONDS = 7 * 24 * 3600


def campaign(**overrides: Any) -> Campaign:
    """A campaign document with every rule open, overridden per test."""
    document: dict[str, Any] = {
        "id": "c-test",
        "version": 1,
        "name": "test campaign",
        "valid_from": "2026-01-01T00:00:00Z",
        "rules": {"currencies": ["USD", "EUR"]},
        "reward": {"basis_points": 200},
    }
    for key, value in overrides.items():
        if key in ("rules", "reward"):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return Campaign.model_validate(document)


def facts(**overrides: Any) -> PurchaseFacts:
    values: dict[str, Any] = {
        "amount_minor": 5_000,
        "currency": Currency.USD,
        "mcc": "5411",
        "occurred_at": NOW,
        "segment": "standard",
    }
    return PurchaseFacts(**{**values, **overrides})


# ----- each rule dimension, matching and not -------------------------------------


@pytest.mark.parametrize(
    ("rules", "purchase", "mismatch"),
    [
        ({"mcc_include": ["5411", "5812"]}, {"mcc": "5812"}, None),
        ({"mcc_include": ["5411", "5812"]}, {"mcc": "5999"}, "MCC 5999 not included"),
        ({"mcc_exclude": ["6011"]}, {"mcc": "5411"}, None),
        ({"mcc_exclude": ["6011"]}, {"mcc": "6011"}, "MCC 6011 excluded"),
        ({"min_amount_minor": {"USD": 1000}}, {"amount_minor": 1000}, None),
        ({"min_amount_minor": {"USD": 1000}}, {"amount_minor": 999}, "under the minimum"),
        # The minimum is per currency: EUR has none here.
        ({"min_amount_minor": {"USD": 1000}}, {"amount_minor": 500, "currency": "EUR"}, None),
        ({"currencies": ["EUR"]}, {"currency": "USD"}, "does not pay in USD"),
        ({"segments": ["premium"]}, {"segment": "premium"}, None),
        ({"segments": ["premium"]}, {"segment": "standard"}, "segment standard not eligible"),
        (
            {"recent_purchases": {"within_seconds": WEEK_SECONDS, "purchases_min": 1}},
            {"recent": [RecentPurchases(within_seconds=WEEK_SECONDS, purchases=1)]},
            None,
        ),
        (
            {"recent_purchases": {"within_seconds": WEEK_SECONDS, "purchases_min": 2}},
            {"recent": [RecentPurchases(within_seconds=WEEK_SECONDS, purchases=1)]},
            "needs 2",
        ),
        # A window nobody counted is not assumed to hold.
        ({"recent_purchases": {"within_seconds": WEEK_SECONDS}}, {}, "needs 1"),
    ],
)
def test_each_rule_dimension_matches_or_says_why_not(
    rules: dict[str, Any], purchase: dict[str, Any], mismatch: str | None
) -> None:
    found = campaign_mismatch(campaign(rules=rules), facts(**purchase))
    if mismatch is None:
        assert found is None
    else:
        assert found is not None and mismatch in found


def test_the_time_window_is_evaluated_at_the_purchase_time_and_ends_exclusive() -> None:
    window = campaign(valid_from="2026-03-01T00:00:00Z", valid_to="2026-04-01T00:00:00Z")
    assert campaign_mismatch(window, facts(occurred_at=NOW)) is None
    assert campaign_mismatch(window, facts(occurred_at=datetime(2026, 3, 1, tzinfo=UTC))) is None
    assert "starts" in str(
        campaign_mismatch(window, facts(occurred_at=datetime(2026, 2, 28, 23, 59, tzinfo=UTC)))
    )
    assert "ended" in str(
        campaign_mismatch(window, facts(occurred_at=datetime(2026, 4, 1, tzinfo=UTC)))
    )


def test_an_offer_is_a_campaign_whose_customer_rules_hold_now_whatever_the_purchase() -> None:
    terms = campaign(id="terms", rules={"currencies": ["EUR"], "mcc_include": ["5411"]})
    premium = campaign(id="premium", rules={"segments": ["premium"]})
    active = campaign(id="active", rules={"recent_purchases": {"within_seconds": WEEK_SECONDS}})
    later = campaign(id="later", valid_from="2026-04-01T00:00:00Z")
    ended = campaign(id="ended", valid_to="2026-03-01T00:00:00Z")
    campaigns = [terms, premium, active, later, ended]
    recent = [RecentPurchases(within_seconds=WEEK_SECONDS, purchases=1)]

    def ids(customer: CustomerFacts) -> list[str]:
        return [found.id for found in offered(campaigns, customer, NOW)]

    # The purchase's rules (currency, MCC, amount) are the offer's terms.
    assert ids(CustomerFacts()) == ["terms"]
    assert ids(CustomerFacts(segment="premium", recent=recent)) == ["active", "premium", "terms"]
    # The same rules as a purchase's evaluation: each customer rule fails it alike.
    purchase = facts(currency=Currency.EUR, segment="standard")
    assert campaign_mismatch(premium, purchase) == "segment standard not eligible"
    assert "needs 1" in str(campaign_mismatch(active, purchase))


# ----- rewards -------------------------------------------------------------------


def test_the_reward_is_basis_points_rounded_down_then_capped() -> None:
    plain = evaluate([campaign()], facts(amount_minor=1_999), total_basis_points_max=10_000)
    assert [line.amount_minor for line in plain.rewards] == [39]  # 2% of 19.99 = 0.3998
    capped = evaluate(
        [campaign(reward={"cap_minor": {"USD": 50}})],
        facts(amount_minor=10_000),
        total_basis_points_max=10_000,
    )
    assert capped.rewards[0].amount_minor == 50 and capped.rewards[0].capped


def test_a_reward_that_rounds_to_zero_pays_nothing() -> None:
    decision = evaluate([campaign()], facts(amount_minor=49), total_basis_points_max=10_000)
    assert decision.rewards == []
    assert decision.verdicts[0].reason == "the reward rounds down to zero"


def test_the_best_single_reward_wins_and_stackable_ones_add_to_it() -> None:
    groceries = campaign(id="groceries", reward={"basis_points": 200})
    premium = campaign(id="premium", reward={"basis_points": 500})
    active = campaign(id="active", reward={"basis_points": 100, "stackable": True})
    decision = evaluate([groceries, active, premium], facts(), total_basis_points_max=10_000)
    assert [(line.campaign_id, line.amount_minor) for line in decision.rewards] == [
        ("premium", 250),
        ("active", 50),
    ]
    verdicts = {v.campaign_id: v for v in decision.verdicts}
    assert (
        not verdicts["groceries"].matched and "outranked by premium" in verdicts["groceries"].reason
    )


def test_a_tie_between_single_rewards_goes_to_the_smaller_campaign_id() -> None:
    decision = evaluate(
        [campaign(id="b-offer"), campaign(id="a-offer")], facts(), total_basis_points_max=10_000
    )
    assert [line.campaign_id for line in decision.rewards] == ["a-offer"]


def test_the_policy_limits_the_sum_of_stacked_rewards() -> None:
    best = campaign(id="best", reward={"basis_points": 800})
    extra = campaign(id="extra", reward={"basis_points": 500, "stackable": True})
    more = campaign(id="more", reward={"basis_points": 500, "stackable": True})
    decision = evaluate(
        [best, extra, more], facts(amount_minor=10_000), total_basis_points_max=1_000
    )
    assert [(line.campaign_id, line.amount_minor) for line in decision.rewards] == [
        ("best", 800),
        ("extra", 200),
    ]
    assert decision.rewards[1].capped
    assert "limit" in {v.campaign_id: v for v in decision.verdicts}["more"].reason


def test_the_sample_campaigns_reward_groceries_premium_and_recent_activity() -> None:
    campaigns = read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns
    grocery = evaluate(campaigns, facts(amount_minor=5_000), total_basis_points_max=1_000)
    assert [(r.campaign_id, r.amount_minor) for r in grocery.rewards] == [
        ("groceries-dining-2pct", 100)
    ]
    small = evaluate(campaigns, facts(amount_minor=999, mcc="5411"), total_basis_points_max=1_000)
    assert small.rewards == []
    premium_active = evaluate(
        campaigns,
        facts(
            amount_minor=5_000,
            segment="premium",
            recent=[RecentPurchases(within_seconds=WEEK_SECONDS, purchases=3)],
        ),
        total_basis_points_max=1_000,
    )
    assert [(r.campaign_id, r.amount_minor) for r in premium_active.rewards] == [
        ("premium-5pct", 250),
        ("active-1pct", 50),
    ]


# ----- properties ------------------------------------------------------------------

bps = st.integers(min_value=1, max_value=10_000)
caps = st.none() | st.integers(min_value=1, max_value=10**9)


@st.composite
def campaigns_and_purchase(draw: st.DrawFn) -> tuple[list[Campaign], PurchaseFacts, int]:
    count = draw(st.integers(min_value=1, max_value=5))
    campaigns = []
    for index in range(count):
        cap = draw(caps)
        campaigns.append(
            campaign(
                id=f"c{index}",
                reward={
                    "basis_points": draw(bps),
                    "cap_minor": {} if cap is None else {"USD": cap},
                    "stackable": draw(st.booleans()),
                },
            )
        )
    purchase = facts(amount_minor=draw(st.integers(min_value=1, max_value=10**15)))
    return campaigns, purchase, draw(bps)


@settings(max_examples=300, deadline=None)
@given(campaigns_and_purchase())
def test_property_no_reward_exceeds_its_cap_its_rate_or_the_purchase_limit(
    drawn: tuple[list[Campaign], PurchaseFacts, int],
) -> None:
    campaigns, purchase, limit_bp = drawn
    decision = evaluate(campaigns, purchase, total_basis_points_max=limit_bp)
    by_id = {c.id: c for c in campaigns}
    for line in decision.rewards:
        terms = by_id[line.campaign_id].reward
        assert 0 < line.amount_minor <= purchase.amount_minor * terms.basis_points // 10_000
        cap = terms.cap_minor.get(purchase.currency)
        assert cap is None or line.amount_minor <= cap
    assert decision.total_minor <= purchase.amount_minor * limit_bp // 10_000
    assert sum(not by_id[line.campaign_id].reward.stackable for line in decision.rewards) <= 1
    # Deterministic whatever order the campaigns come in.
    again = evaluate(list(reversed(campaigns)), purchase, total_basis_points_max=limit_bp)
    assert again == decision


@settings(max_examples=300, deadline=None)
@given(
    paid=st.integers(min_value=1, max_value=10**9),
    amount=st.integers(min_value=1, max_value=10**12),
    refunds=st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=10),
)
def test_property_total_clawback_never_exceeds_the_reward_and_a_full_refund_takes_it_all(
    paid: int, amount: int, refunds: list[int]
) -> None:
    refunded = 0
    clawed_back = 0
    for refund in refunds:
        refunded += refund
        target = clawback_target_minor(paid, amount, refunded)
        assert target >= clawed_back  # cumulative: a later refund never gives back
        clawed_back = target
        assert clawed_back <= paid
    if refunded >= amount:
        assert clawed_back == paid
    else:
        assert clawed_back == paid * refunded // amount


def test_a_partial_then_the_rest_claws_back_half_then_everything() -> None:
    assert clawback_target_minor(101, 5_000, 2_500) == 50
    assert clawback_target_minor(101, 5_000, 5_000) == 101
    assert clawback_target_minor(101, 5_000, 0) == 0


# ----- the campaign file -------------------------------------------------------------


def load_errors(document: Any) -> list[str]:
    with pytest.raises(ValidationError) as error:
        CampaignFile.model_validate_json(json.dumps(document))
    return [".".join(str(part) for part in e["loc"]) for e in error.value.errors()]


def sample() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SAMPLE_CAMPAIGNS_FILE.read_text())
    return document


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("reward", "basis_points"), 10_001, "campaigns.0.reward.basis_points"),
        (("reward", "basis_points"), 1.5, "campaigns.0.reward.basis_points"),
        (("rules", "mcc_include"), ["541"], "campaigns.0.rules.mcc_include.0"),
        (("rules", "currencies"), ["XXX"], "campaigns.0.rules.currencies.0"),
        (("rules", "currencies"), ["EUR"], "campaigns.0.rules"),
        (("valid_from",), "2026-01-01T00:00:00", "campaigns.0.valid_from"),
        (("valid_to",), "2024-01-01T00:00:00Z", "campaigns.0"),
        (("reward", "cap_minor"), {"USD": 0}, "campaigns.0.reward.cap_minor.USD"),
        (("id",), "Has Spaces", "campaigns.0.id"),
        (("rules", "surprise"), True, "campaigns.0.rules.surprise"),
    ],
)
def test_campaign_file_errors_name_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    document = sample()
    target = document["campaigns"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert field in load_errors(document)


def test_a_campaign_version_listed_twice_is_refused() -> None:
    document = sample()
    document["campaigns"].append(document["campaigns"][0])
    assert "campaigns" in load_errors(document)


def test_malformed_json_is_refused() -> None:
    with pytest.raises(ValidationError):
        CampaignFile.model_validate_json("{not json")


def test_the_sample_file_is_valid() -> None:
    assert len(read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns) == 3


def test_a_refund_amount_is_a_positive_integer() -> None:
    for amount in (0, -1, 1.5, "10"):
        with pytest.raises(ValidationError) as error:
            CashbackRefund(refund_id="r-1", amount_minor=amount)  # type: ignore[arg-type]
        assert error.value.errors()[0]["loc"] == ("amount_minor",)
