"""The card's spending limits, enforced by real authorizations.

Each test asks the card through the issuer simulator (its real-time request,
signed, through the gateway) or, where the card's counters must start from a
given day, asks a card started with those counters directly. Every test
asserts the money: what the ledger holds, not only what the card answered.
"""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import WorkflowHandle

from activities.ledger.verify import verify
from schemas.cards import AuthorizationAnswer, CardPolicy, SpendingLimits
from schemas.issuer import Authorization, CardState, DecisionOutcome
from schemas.money import Currency
from tests.conftest import Platform
from tests.customers import (
    authorize,
    card_of_its_own,
    card_state,
    customer,
    issuer,
    open_card,
    wallet,
    wallet_becomes,
)
from tests.workflows.test_card_disorder import question_to
from workflows.cards import AUTHORIZE_UPDATE


async def increment(platform: Platform, authorization: Authorization, amount: int) -> str:
    """The merchant asks for `amount` more; the card's answer to it."""
    async with issuer(platform) as client:
        grown = await client.simulate_increment(
            authorization.id, amount_minor=amount, idempotency_key=f"inc-{uuid.uuid4().hex}"
        )
    last = grown.decisions[-1]
    return "approved" if last.outcome is DecisionOutcome.APPROVE else last.reason


async def clear_whole(platform: Platform, authorization: Authorization) -> None:
    async with issuer(platform) as client:
        await client.simulate_clearing(
            authorization.id,
            amount_minor=authorization.amount_minor,
            final=True,
            idempotency_key=f"clear-{authorization.id}",
        )


# ----- per transaction: the authorization's total, increments included ------


async def test_the_per_transaction_limit_counts_the_increments_already_approved(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(
        platform, limits=SpendingLimits(per_transaction_minor=5_000)
    )
    first = await authorize(platform, card_id, 3_000)
    assert first.decision_reason == "approved"
    assert await increment(platform, first, 1_500) == "approved"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=4_500)
    # 4,500 + 1,000 is over 5,000 although 1,000 alone is not.
    assert await increment(platform, first, 1_000) == "over_transaction_limit"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=4_500)
    assert await verify(platform.stack.pool) == []


async def test_an_increment_up_to_the_per_transaction_limit_is_approved_and_a_unit_more_is_not(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(
        platform, limits=SpendingLimits(per_transaction_minor=4_000)
    )
    first = await authorize(platform, card_id, 2_500)
    assert await increment(platform, first, 1_501) == "over_transaction_limit"
    assert await increment(platform, first, 1_500) == "approved"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=4_000)
    # Another authorization has a limit of its own.
    second = await authorize(platform, card_id, 4_000)
    assert second.decision_reason == "approved"
    await wallet_becomes(platform, customer_id, posted=10_000, pending=8_000)


# ----- per day and per month: what was approved before counts ---------------


async def test_the_daily_limit_counts_what_was_spent_earlier_today(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, limits=SpendingLimits(per_day_minor=5_000)
    )
    first = await authorize(platform, card_id, 3_000)
    assert first.decision_reason == "approved"
    await clear_whole(platform, first)
    await wallet_becomes(platform, customer_id, posted=7_000, pending=0)
    counted_on = (await card_state(handle)).spent_day
    over = await authorize(platform, card_id, 2_500)
    if (await card_state(handle)).spent_day == counted_on:
        assert over.decision_reason == "over_daily_limit"
        within = await authorize(platform, card_id, 2_000)
        assert within.decision_reason == "approved"
        await wallet_becomes(platform, customer_id, posted=7_000, pending=2_000)
    else:  # midnight UTC passed between the two asks: a new day's limit
        assert over.decision_reason == "approved"
    assert await verify(platform.stack.pool) == []


async def test_the_daily_limit_counts_holds_still_open_and_increments(platform: Platform) -> None:
    customer_id, card_id, handle = await open_card(
        platform, limits=SpendingLimits(per_day_minor=4_000)
    )
    first = await authorize(platform, card_id, 2_000)
    counted_on = (await card_state(handle)).spent_day
    assert await increment(platform, first, 1_000) == "approved"
    over = await authorize(platform, card_id, 1_001)
    if (await card_state(handle)).spent_day == counted_on:
        assert over.decision_reason == "over_daily_limit"
        await wallet_becomes(platform, customer_id, posted=10_000, pending=3_000)
        last = await authorize(platform, card_id, 1_000)
        assert last.decision_reason == "approved"
        await wallet_becomes(platform, customer_id, posted=10_000, pending=4_000)
    else:  # midnight UTC passed between the asks: a new day's limit
        assert over.decision_reason == "approved"


async def test_the_monthly_limit_counts_what_was_spent_earlier_this_month(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(
        platform, {Currency.USD: 20_000}, limits=SpendingLimits(per_month_minor=6_000)
    )
    first = await authorize(platform, card_id, 4_000)
    await clear_whole(platform, first)
    await wallet_becomes(platform, customer_id, posted=16_000, pending=0)
    counted_in = (await card_state(handle)).spent_month
    over = await authorize(platform, card_id, 2_001)
    if (await card_state(handle)).spent_month == counted_in:
        assert over.decision_reason == "over_monthly_limit"
        within = await authorize(platform, card_id, 2_000)
        assert within.decision_reason == "approved"
        await wallet_becomes(platform, customer_id, posted=16_000, pending=2_000)
    else:  # a month began between the asks: a new month's limit
        assert over.decision_reason == "approved"


# ----- counters from an earlier day, month or run ---------------------------


async def ask(handle: WorkflowHandle[Any, Any], amount: int) -> AuthorizationAnswer:
    question = question_to(handle, f"r-{uuid.uuid4().hex[:10]}")
    answer: AuthorizationAnswer = await handle.execute_update(
        AUTHORIZE_UPDATE,
        question.model_copy(update={"amount_minor": amount, "merchant_amount_minor": amount}),
        result_type=AuthorizationAnswer,
    )
    return answer


async def test_yesterdays_spending_does_not_count_against_todays_limit(
    platform: Platform,
) -> None:
    """The card spent its whole daily and monthly limits on a past day of a
    past month (its counters say so): a new day and month begin at midnight
    UTC, and the next purchase is approved against fresh limits."""
    customer_id = await customer(platform)
    handle = await card_of_its_own(
        platform,
        customer_id,
        limits=SpendingLimits(per_day_minor=5_000, per_month_minor=5_000),
        spent_day="2026-01-30",
        spent_day_minor=5_000,
        spent_month="2026-01",
        spent_month_minor=5_000,
    )
    answer = await ask(handle, 4_000)
    assert (answer.decision, answer.reason) == ("approve", "approved")
    state = await card_state(handle)
    assert (state.spent_day_minor, state.spent_month_minor) == (4_000, 4_000)
    assert (await wallet(platform, customer_id)).debits_pending == 4_000


async def test_spending_counted_today_stands_across_a_continue_as_new(
    platform: Platform,
) -> None:
    """The card continues as new while its counters hold today's spending:
    the new run declines what the old one would have."""
    customer_id = await customer(platform, {Currency.USD: 20_000})
    handle = await card_of_its_own(
        platform,
        customer_id,
        limits=SpendingLimits(per_day_minor=3_000),
        policy=CardPolicy(velocity_count_max=100),
        history_events_max=60,
    )
    counted_on = ""
    for _ in range(14):
        answer = await ask(handle, 200)
        assert answer.reason == "approved"
        counted_on = counted_on or (await card_state(handle)).spent_day
    runs = [e async for e in platform.stack.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) > 1, "the card continued as new"
    over = await ask(handle, 201)
    if (await card_state(handle)).spent_day == counted_on:
        assert over.reason == "over_daily_limit"
        assert (await wallet(platform, customer_id)).debits_pending == 2_800
    else:  # midnight UTC passed between the asks: a new day's limit
        assert over.reason == "approved"


# ----- the card's own refusals ----------------------------------------------


async def test_a_paused_or_closed_card_refuses_and_holds_nothing(platform: Platform) -> None:
    """The issuer refuses a paused card without asking; the card's own
    answer, should it be asked (a race with the freeze), is the same."""
    customer_id = await customer(platform)
    for state, reason in ((CardState.PAUSED, "card_paused"), (CardState.CLOSED, "card_closed")):
        handle = await card_of_its_own(platform, customer_id, state=state)
        answer = await ask(handle, 1_000)
        assert (answer.decision, answer.reason) == ("decline", reason)
    assert (await wallet(platform, customer_id)).debits_pending == 0


async def test_a_purchase_in_another_currency_than_the_cards_is_refused(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    handle = await card_of_its_own(platform, customer_id)
    question = question_to(handle, f"r-{uuid.uuid4().hex[:10]}").model_copy(
        update={"currency": Currency.EUR}
    )
    answer: AuthorizationAnswer = await handle.execute_update(
        AUTHORIZE_UPDATE, question, result_type=AuthorizationAnswer
    )
    assert (answer.decision, answer.reason) == ("decline", "currency_mismatch")
    assert (await wallet(platform, customer_id)).debits_pending == 0


async def test_a_card_holds_at_most_its_open_authorizations_max(platform: Platform) -> None:
    customer_id = await customer(platform)
    handle = await card_of_its_own(
        platform, customer_id, policy=CardPolicy(open_authorizations_max=2)
    )
    assert [(await ask(handle, 100)).reason for _ in range(3)] == [
        "approved",
        "approved",
        "too_many_open_authorizations",
    ]
    assert (await wallet(platform, customer_id)).debits_pending == 200


async def test_the_velocity_amount_counts_every_approval_in_the_window(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    handle = await card_of_its_own(
        platform, customer_id, policy=CardPolicy(velocity_amount_max_minor=2_500)
    )
    assert (await ask(handle, 1_000)).reason == "approved"
    assert (await ask(handle, 1_000)).reason == "approved"
    assert (await ask(handle, 501)).reason == "velocity_amount"
    assert (await ask(handle, 500)).reason == "approved"
    assert (await wallet(platform, customer_id)).debits_pending == 2_500
