"""The card's decision rules at their exact boundaries: each limit with one
unit left and one unit over, counters across midnight and month end (UTC),
the velocity window's edge, the open-authorization maximum, the partial
approval's range and the clearing tolerance rounded down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.card_rules import (
    authorized_total,
    count,
    excess_within_tolerance,
    partial_approval,
    refusal,
    roll,
)
from schemas.cards import (
    AuthorizationRequest,
    CardInput,
    CardPolicy,
    DecisionRecord,
    DeclineReason,
    Merchant,
    Spend,
    SpendingLimits,
)
from schemas.issuer import CardState
from schemas.money import Currency

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
TODAY, THIS_MONTH = "2026-03-14", "2026-03"
WINDOW = 3_600


def card(**fields: object) -> CardInput:
    values: dict[str, object] = {
        "card_id": "card_1",
        "customer_id": "cus_1",
        "state": CardState.OPEN,
        "policy": CardPolicy(velocity_window_seconds=WINDOW),
    }
    values.update(fields)
    return CardInput.model_validate(values)


def ask(amount_minor: int = 400, **fields: object) -> AuthorizationRequest:
    values: dict[str, object] = {
        "authorization_id": "auth_1",
        "kind": "initial",
        "card_id": "card_1",
        "amount_minor": amount_minor,
        "currency": Currency.USD,
        "merchant_amount_minor": amount_minor,
        "merchant_currency": Currency.USD,
        "merchant": Merchant(name="Shop", mcc="5411", country="US"),
    }
    values.update(fields)
    return AuthorizationRequest.model_validate(values)


def never_asked() -> bool:
    raise AssertionError("the open-maximum rule was asked below the maximum")


def decide(
    the_card: CardInput,
    request: AuthorizationRequest | None = None,
    *,
    authorized_minor: int = 0,
    open_now: int = 0,
    declines_at_max: bool = True,
) -> DeclineReason | None:
    return refusal(
        the_card,
        request or ask(),
        authorized_minor,
        open_now,
        NOW,
        (lambda: declines_at_max)
        if open_now >= the_card.policy.open_authorizations_max
        else never_asked,
    )


# ----- the card's own state -------------------------------------------------------


def test_an_open_card_in_its_currency_with_no_limits_approves() -> None:
    assert decide(card()) is None


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (CardState.PAUSED, DeclineReason.CARD_PAUSED),
        (CardState.CLOSED, DeclineReason.CARD_CLOSED),
        (CardState.PENDING_ACTIVATION, DeclineReason.CARD_CLOSED),
        (CardState.PENDING_FULFILLMENT, DeclineReason.CARD_CLOSED),
    ],
)
def test_a_card_not_open_declines_with_its_state(state: CardState, reason: DeclineReason) -> None:
    assert decide(card(state=state)) is reason


def test_a_paused_card_says_paused_before_any_other_reason() -> None:
    paused = card(state=CardState.PAUSED, limits=SpendingLimits(blocked_mccs=["5411"]))
    assert decide(paused, ask(currency=Currency.EUR)) is DeclineReason.CARD_PAUSED


def test_a_request_in_another_currency_declines_before_the_merchant_is_looked_at() -> None:
    blocked = card(limits=SpendingLimits(blocked_mccs=["5411"]))
    assert decide(blocked, ask(currency=Currency.EUR)) is DeclineReason.CURRENCY_MISMATCH


def test_a_blocked_mcc_declines_and_another_passes() -> None:
    blocked = card(limits=SpendingLimits(blocked_mccs=["5411", "7995"]))
    assert decide(blocked) is DeclineReason.BLOCKED_MCC
    other = ask(merchant=Merchant(name="Cafe", mcc="5812", country="US"))
    assert decide(blocked, other) is None


# ----- open authorizations ---------------------------------------------------------


def test_one_below_the_open_maximum_approves_without_asking_the_rule() -> None:
    the_card = card(policy=CardPolicy(open_authorizations_max=3))
    assert decide(the_card, open_now=2) is None


def test_at_the_open_maximum_the_rule_decides() -> None:
    the_card = card(policy=CardPolicy(open_authorizations_max=3))
    assert decide(the_card, open_now=3) is DeclineReason.TOO_MANY_OPEN_AUTHORIZATIONS
    assert decide(the_card, open_now=3, declines_at_max=False) is None


def test_past_the_open_maximum_declines_whatever_the_rule() -> None:
    the_card = card(policy=CardPolicy(open_authorizations_max=3))
    decided = decide(the_card, open_now=4, declines_at_max=False)
    assert decided is DeclineReason.TOO_MANY_OPEN_AUTHORIZATIONS


def test_an_increment_is_never_declined_for_open_authorizations() -> None:
    the_card = card(policy=CardPolicy(open_authorizations_max=3))
    assert decide(the_card, ask(kind="incremental"), open_now=9) is None


# ----- limits ----------------------------------------------------------------------


def test_the_per_transaction_limit_counts_what_the_authorization_already_has() -> None:
    limited = card(limits=SpendingLimits(per_transaction_minor=1_000))
    assert decide(limited, ask(400), authorized_minor=600) is None
    assert decide(limited, ask(401), authorized_minor=600) is DeclineReason.OVER_TRANSACTION_LIMIT
    assert decide(limited, ask(1_000)) is None
    assert decide(limited, ask(1_001)) is DeclineReason.OVER_TRANSACTION_LIMIT


def test_the_daily_limit_counts_the_days_spend() -> None:
    limited = card(limits=SpendingLimits(per_day_minor=1_000), spent_day=TODAY, spent_day_minor=600)
    assert decide(limited, ask(400)) is None
    assert decide(limited, ask(401)) is DeclineReason.OVER_DAILY_LIMIT


def test_the_daily_limit_starts_again_at_midnight_utc() -> None:
    yesterday = card(
        limits=SpendingLimits(per_day_minor=1_000),
        spent_day="2026-03-13",
        spent_day_minor=1_000,
        spent_month=THIS_MONTH,
        spent_month_minor=1_000,
    )
    assert decide(yesterday, ask(1_000)) is None
    assert (yesterday.spent_day, yesterday.spent_day_minor) == (TODAY, 0)
    # The month goes on.
    assert (yesterday.spent_month, yesterday.spent_month_minor) == (THIS_MONTH, 1_000)


def test_the_monthly_limit_counts_the_months_spend_and_starts_again_next_month() -> None:
    limited = card(
        limits=SpendingLimits(per_month_minor=5_000),
        spent_month=THIS_MONTH,
        spent_month_minor=4_600,
    )
    assert decide(limited, ask(400)) is None
    assert decide(limited, ask(401)) is DeclineReason.OVER_MONTHLY_LIMIT
    last_month = card(
        limits=SpendingLimits(per_month_minor=5_000),
        spent_month="2026-02",
        spent_month_minor=5_000,
    )
    assert decide(last_month, ask(5_000)) is None
    assert (last_month.spent_month, last_month.spent_month_minor) == (THIS_MONTH, 0)


def test_the_day_is_checked_before_the_month() -> None:
    both = card(
        limits=SpendingLimits(per_day_minor=100, per_month_minor=100),
        spent_day=TODAY,
        spent_month=THIS_MONTH,
    )
    assert decide(both, ask(101)) is DeclineReason.OVER_DAILY_LIMIT


def test_the_transaction_limit_is_checked_before_the_day() -> None:
    both = card(limits=SpendingLimits(per_transaction_minor=100, per_day_minor=100))
    assert decide(both, ask(101)) is DeclineReason.OVER_TRANSACTION_LIMIT


# ----- velocity ---------------------------------------------------------------------


def spends(*amounts: int, ago: int = 60) -> list[Spend]:
    return [Spend(at=NOW - timedelta(seconds=ago), amount_minor=a) for a in amounts]


def test_the_velocity_count_declines_at_its_maximum() -> None:
    policy = CardPolicy(velocity_window_seconds=WINDOW, velocity_count_max=3)
    assert decide(card(policy=policy, recent=spends(1, 1))) is None
    assert decide(card(policy=policy, recent=spends(1, 1, 1))) is DeclineReason.VELOCITY_COUNT


def test_the_velocity_amount_counts_the_window_and_the_request() -> None:
    policy = CardPolicy(velocity_window_seconds=WINDOW, velocity_amount_max_minor=1_000)
    assert decide(card(policy=policy, recent=spends(300, 300)), ask(400)) is None
    over = card(policy=policy, recent=spends(300, 300))
    assert decide(over, ask(401)) is DeclineReason.VELOCITY_AMOUNT


def test_the_velocity_count_is_checked_before_the_amount() -> None:
    policy = CardPolicy(
        velocity_window_seconds=WINDOW, velocity_count_max=1, velocity_amount_max_minor=1
    )
    assert decide(card(policy=policy, recent=spends(5))) is DeclineReason.VELOCITY_COUNT


def test_spend_at_the_windows_start_is_out_of_it_and_a_second_later_in() -> None:
    policy = CardPolicy(velocity_window_seconds=WINDOW, velocity_count_max=1)
    at_start = card(policy=policy, recent=spends(1, ago=WINDOW))
    assert decide(at_start) is None
    assert at_start.recent == []
    inside = card(policy=policy, recent=spends(1, ago=WINDOW - 1))
    assert decide(inside) is DeclineReason.VELOCITY_COUNT


# ----- counters -----------------------------------------------------------------------


def test_an_approval_counts_towards_the_day_the_month_and_the_window() -> None:
    the_card = card(spent_day=TODAY, spent_day_minor=100, spent_month=THIS_MONTH)
    the_card.spent_month_minor = 900
    count(the_card, NOW, 250)
    assert (the_card.spent_day_minor, the_card.spent_month_minor) == (350, 1_150)
    assert the_card.recent == [Spend(at=NOW, amount_minor=250)]


def test_an_approval_taken_back_comes_off_the_newest_spend() -> None:
    the_card = card(spent_day=TODAY, spent_month=THIS_MONTH, recent=spends(100, 300))
    the_card.spent_day_minor = the_card.spent_month_minor = 400
    count(the_card, NOW, -200)
    assert (the_card.spent_day_minor, the_card.spent_month_minor) == (200, 200)
    assert [s.amount_minor for s in the_card.recent] == [100, 100]


def test_one_unit_approved_is_a_spend_in_the_window() -> None:
    the_card = card()
    count(the_card, NOW, 1)
    assert the_card.recent == [Spend(at=NOW, amount_minor=1)]


def test_a_take_back_touches_only_the_newest_of_several_spends() -> None:
    the_card = card(recent=spends(100, 200, 300))
    count(the_card, NOW, -299)
    # One unit of the newest is still spent: it stays in the window.
    assert [s.amount_minor for s in the_card.recent] == [100, 200, 1]


def test_an_approval_taken_back_in_full_leaves_the_window() -> None:
    the_card = card(spent_day=TODAY, spent_month=THIS_MONTH, recent=spends(100, 300))
    count(the_card, NOW, -300)
    assert [s.amount_minor for s in the_card.recent] == [100]
    # More than the newest spend: it leaves, the one before stays whole.
    more = card(recent=spends(100, 300))
    count(more, NOW, -400)
    assert [s.amount_minor for s in more.recent] == [100]


def test_taking_back_with_an_empty_window_still_corrects_the_day_and_month() -> None:
    the_card = card(spent_day=TODAY, spent_month=THIS_MONTH)
    the_card.spent_day_minor = the_card.spent_month_minor = 500
    count(the_card, NOW, -200)
    assert (the_card.spent_day_minor, the_card.spent_month_minor) == (300, 300)
    assert the_card.recent == []


def test_nothing_counted_adds_no_spend_to_the_window() -> None:
    the_card = card(recent=spends(100))
    count(the_card, NOW, 0)
    assert [s.amount_minor for s in the_card.recent] == [100]


def test_counting_on_a_new_day_starts_from_zero() -> None:
    the_card = card(spent_day="2026-03-13", spent_day_minor=700, spent_month="2026-02")
    the_card.spent_month_minor = 900
    count(the_card, NOW, 50)
    assert (the_card.spent_day, the_card.spent_day_minor) == (TODAY, 50)
    assert (the_card.spent_month, the_card.spent_month_minor) == (THIS_MONTH, 50)


def test_roll_keeps_this_days_and_months_counters() -> None:
    the_card = card(spent_day=TODAY, spent_day_minor=7, spent_month=THIS_MONTH)
    the_card.spent_month_minor = 9
    roll(the_card, NOW)
    assert (the_card.spent_day_minor, the_card.spent_month_minor) == (7, 9)


# ----- partial approval and totals ----------------------------------------------------


@pytest.mark.parametrize(
    ("available", "partial"),
    [(-5, 0), (0, 0), (1, 1), (999, 999), (1_000, 0), (1_500, 0)],
)
def test_a_partial_approval_is_what_is_available_between_zero_and_the_request(
    available: int, partial: int
) -> None:
    assert partial_approval(1_000, available) == partial


def test_an_authorizations_total_is_every_decision_approved() -> None:
    decisions = [
        DecisionRecord(
            index=0, kind="initial", requested_minor=500, approved_minor=500, reason="ok"
        ),
        DecisionRecord(
            index=1, kind="incremental", requested_minor=300, approved_minor=0, reason="no"
        ),
        DecisionRecord(
            index=2, kind="incremental", requested_minor=200, approved_minor=120, reason="part"
        ),
    ]
    assert authorized_total(decisions) == 620
    assert authorized_total([]) == 0


# ----- clearing over the authorization --------------------------------------------------


def test_a_clearing_within_what_was_authorized_posts_whatever_the_excess() -> None:
    assert excess_within_tolerance(1_000, 1_000, 0, 10_000, 0)
    assert excess_within_tolerance(1_000, 900, 0, 10_000, 0)


@pytest.mark.parametrize(
    ("over", "excess", "posts"),
    [(0, 200, True), (0, 201, False), (50, 150, True), (50, 151, False)],
)
def test_the_excess_posts_up_to_the_tolerance_of_what_was_authorized(
    over: int, excess: int, posts: bool
) -> None:
    # 2,000 bp of 1,000 authorized: 200 beyond it, over all its clearings.
    assert excess_within_tolerance(1_000, 1_001, over, excess, 2_000) is posts


def test_the_tolerance_is_rounded_down() -> None:
    # 2,000 bp of 999 is 199.8: 199 posts, 200 waits for an operator.
    assert excess_within_tolerance(999, 1_199, 0, 199, 2_000)
    assert not excess_within_tolerance(999, 1_199, 0, 200, 2_000)


def test_the_tolerance_of_the_largest_authorization_is_exact_to_the_unit() -> None:
    # 9,999 bp of 999,999,999,990,001 is 999,899,999,990,001.9999: in floating
    # point it would round up to ...002 and let one unit too many post.
    authorized = 999_999_999_990_001
    allowance = authorized * 9_999 // 10_000
    assert allowance == 999_899_999_990_001
    assert excess_within_tolerance(authorized, authorized + 1, 0, allowance, 9_999)
    assert not excess_within_tolerance(authorized, authorized + 1, 0, allowance + 1, 9_999)


def test_no_tolerance_posts_no_excess() -> None:
    assert not excess_within_tolerance(1_000, 1_001, 0, 1, 0)
