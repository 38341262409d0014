"""The card's controls as pure rules: which scope wins, what an MCC list
names, a nightly freeze's hours, each window's period, and the counters an
approval (and its taking back) moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.card_controls import (
    Controls,
    MerchantLock,
    NightlyFreeze,
    TemporaryControl,
    WindowLimit,
    effective,
    period,
)
from schemas.card_rules import count, window_refusal
from schemas.cards import AuthorizationRequest, CardInput, DeclineReason, Merchant
from schemas.issuer import CardState
from schemas.merchant_codes import names
from schemas.money import Currency

NOW = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)


def test_each_field_comes_from_the_narrowest_scope_that_sets_it() -> None:
    program = Controls(country_block=["FR"], mcc_block=["7995"], single_use=False)
    customer = Controls(country_block=[], merchant_lock=MerchantLock(mode="first"))
    card = Controls(mcc_block=["group:cash"])
    later = TemporaryControl(
        id="b", controls=Controls(country_allow=["GB"]), until=NOW + timedelta(hours=1)
    )
    newest = TemporaryControl(
        id="c", controls=Controls(country_allow=["US"]), until=NOW + timedelta(hours=1)
    )
    gone = TemporaryControl(
        id="a", controls=Controls(single_use=True), until=NOW - timedelta(seconds=1)
    )
    found = effective(program, customer, card, [gone, later, newest], NOW)
    assert found.country_block == []  # the customer's empty list, not the program's
    assert found.mcc_block == ["group:cash"]
    assert found.merchant_lock is not None and found.merchant_lock.mode == "first"
    assert found.country_allow == ["US"]  # the newest temporary control
    assert found.single_use is False  # the expired one no longer applies
    assert effective(None, None, None, [], NOW) == Controls()


def test_an_mcc_list_names_codes_and_groups() -> None:
    assert names(["group:gambling"], "7995")
    assert names(["5411"], "5411")
    assert not names(["group:gambling", "5412"], "5411")
    with pytest.raises(ValueError, match="names no MCC group"):
        Controls(mcc_allow=["group:unknown"])


@pytest.mark.parametrize(
    ("from_hour", "to_hour", "frozen_hours"),
    [(22, 6, {22, 23, 0, 1, 2, 3, 4, 5}), (1, 3, {1, 2})],
)
def test_a_nightly_freeze_spans_its_hours_across_midnight(
    from_hour: int, to_hour: int, frozen_hours: set[int]
) -> None:
    freeze = NightlyFreeze(from_hour=from_hour, to_hour=to_hour)
    for hour in range(24):
        at = NOW.replace(hour=hour, minute=59)
        assert freeze.frozen_at(at) is (hour in frozen_hours), hour


def test_each_window_has_its_period() -> None:
    assert [period(w, NOW) for w in ("day", "week", "month", "year", "lifetime")] == [
        "2026-12-31",
        "2026-W53",
        "2026-12",
        "2026",
        "lifetime",
    ]


def ask(amount: int, mcc: str = "5411", kind: str = "initial") -> AuthorizationRequest:
    return AuthorizationRequest(
        authorization_id="a-1",
        kind=kind,  # type: ignore[arg-type]
        card_id="card-1",
        amount_minor=amount,
        currency=Currency.USD,
        merchant_amount_minor=amount,
        merchant_currency=Currency.USD,
        merchant=Merchant(name="Shop", mcc=mcc, country="GB"),
    )


def test_window_counters_count_approvals_take_them_back_and_start_each_period_at_zero() -> None:
    card = CardInput(card_id="card-1", customer_id="c-1", state=CardState.OPEN)
    limits = Controls(
        limits=[
            WindowLimit(window="day", amount_max_minor=1_000, count_max=2),
            WindowLimit(window="month", amount_max_minor=500, mcc_group="dining"),
        ]
    )
    count(card, NOW, 600, mcc="5812", purchases=1)
    assert window_refusal(card, limits, ask(401), NOW) is DeclineReason.OVER_DAILY_LIMIT
    assert window_refusal(card, limits, ask(1, "5812"), NOW) is (DeclineReason.OVER_MCC_GROUP_LIMIT)
    # Taken back (the hold was refused): the day and the group have room again.
    count(card, NOW, -600, mcc="5812", purchases=-1)
    assert window_refusal(card, limits, ask(1_000, "5812"), NOW) is (
        DeclineReason.OVER_MCC_GROUP_LIMIT
    )
    assert window_refusal(card, limits, ask(500, "5812"), NOW) is None
    count(card, NOW, 10, purchases=1)
    count(card, NOW, 10, purchases=1)
    assert window_refusal(card, limits, ask(1), NOW) is DeclineReason.OVER_COUNT_LIMIT
    # An increment is no new purchase.
    assert window_refusal(card, limits, ask(1, kind="incremental"), NOW) is None
    # The next day (and month, and year) start from zero.
    assert window_refusal(card, limits, ask(1_000), NOW + timedelta(hours=1)) is None
