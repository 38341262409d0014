"""A customer's KYC tier applied by their cards' real authorizations: the
tier's limit per purchase, and the month's card spend over all their cards
together. Each test asks the cards through the issuer simulator (its
real-time request, signed, through the gateway), moves the tier through the
operator's API route, and asserts the money the ledger holds."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from activities.api_keys import SCOPE_OPERATIONS
from activities.card_tiers import HOLD_WITHIN_TIER
from activities.ledger.verify import verify
from schemas.card_tiers import default_tier_card_limits
from schemas.customers import KycTier
from schemas.money import Currency
from tests.conftest import Platform
from tests.customers import (
    FREE,
    authorize,
    issue_card,
    issuer,
    open_card,
    wallet_becomes,
)
from tests.workflows.test_card_disorder import patient_issuer, replays

FUNDS = {Currency.USD: 500_000}
BASIC = default_tier_card_limits()[KycTier.BASIC][Currency.USD]
PER_PURCHASE = BASIC.per_purchase_max_minor or 0
MONTHLY = BASIC.monthly_max_minor or 0


async def move_tier(platform: Platform, customer_id: str, tier: str) -> dict[str, Any]:
    """An operator moves the customer to `tier` through the API."""
    operator = await platform.key_headers(SCOPE_OPERATIONS)
    async with httpx.AsyncClient(base_url=platform.gateway_url, headers=operator) as http:
        answer = await http.put(
            f"/v1/customers/{customer_id}/kyc-tier",
            json={"tier": tier, "reason": "verification level reviewed"},
        )
    assert answer.status_code == 200, answer.text
    moved: dict[str, Any] = answer.json()
    return moved


async def month_spent(platform: Platform, customer_id: str) -> int:
    """What the customer's cards were approved for, over all months (one here)."""
    found = await platform.stack.pool.fetchval(
        "SELECT sum(spent_minor) FROM card_tier_spend WHERE customer_id = $1", customer_id
    )
    return int(found or 0)


async def test_a_basic_customers_cards_share_the_tiers_month_and_an_upgrade_applies_at_once(
    platform: Platform,
) -> None:
    customer_id, card_a, _ = await open_card(platform, FUNDS)
    issued = await (await issue_card(platform, customer_id, fees=FREE)).result()
    assert issued.card_id is not None
    card_b = issued.card_id
    moved = await move_tier(platform, customer_id, "basic")
    assert moved == {
        "customer_id": customer_id,
        "kyc_tier": "basic",
        "previous_tier": "standard",
        "changed": True,
    }
    over = await authorize(platform, card_a, PER_PURCHASE + 1)
    assert over.decision_reason == "over_tier_transaction_limit"
    # The month's limit, spent half on each card.
    for card_id in (card_a, card_a, card_b, card_b):
        approved = await authorize(platform, card_id, PER_PURCHASE)
        assert approved.decision_reason == "approved", approved
    one_more = await authorize(platform, card_b, 1)
    assert one_more.decision_reason == "over_tier_monthly_limit"
    await wallet_becomes(platform, customer_id, posted=FUNDS[Currency.USD], pending=MONTHLY)
    assert await month_spent(platform, customer_id) == MONTHLY
    # Verified further: the very next purchase is decided by the new tier,
    # with no change to either card.
    await move_tier(platform, customer_id, "standard")
    again = await authorize(platform, card_b, 1)
    assert again.decision_reason == "approved"
    await wallet_becomes(platform, customer_id, posted=FUNDS[Currency.USD], pending=MONTHLY + 1)
    assert await verify(platform.stack.pool) == []


async def test_the_tiers_per_purchase_limit_covers_the_authorizations_increments(
    platform: Platform,
) -> None:
    customer_id, card_id, _ = await open_card(platform, FUNDS)
    await move_tier(platform, customer_id, "basic")
    first = await authorize(platform, card_id, 20_000)
    assert first.decision_reason == "approved"
    async with issuer(platform) as client:
        over = await client.simulate_increment(
            first.id, amount_minor=PER_PURCHASE - 20_000 + 1, idempotency_key=uuid.uuid4().hex
        )
        fits = await client.simulate_increment(
            first.id, amount_minor=PER_PURCHASE - 20_000, idempotency_key=uuid.uuid4().hex
        )
    assert over.decisions[-1].reason == "over_tier_transaction_limit"
    assert fits.decisions[-1].reason == "approved"
    await wallet_becomes(platform, customer_id, posted=FUNDS[Currency.USD], pending=PER_PURCHASE)
    assert await month_spent(platform, customer_id) == PER_PURCHASE


async def test_a_worker_killed_after_the_tier_hold_committed_counts_the_purchase_once(
    platform: Platform,
) -> None:
    customer_id, card_id, handle = await open_card(platform, FUNDS)
    await move_tier(platform, customer_id, "basic")
    patient_issuer(platform)
    # A first purchase: the card's accounts are open, so the next decision
    # runs whole inside the workflow task that takes the question.
    assert (await authorize(platform, card_id, 10_000)).decision_reason == "approved"
    platform.stack.faults.fail_after_local_activity(HOLD_WITHIN_TIER, times=1)
    killed = await authorize(platform, card_id, PER_PURCHASE)
    assert platform.stack.faults.injected == [f"local_activity {HOLD_WITHIN_TIER}"]
    assert killed.decision_reason == "approved"
    # The retried task found the hold and its count: each counted once.
    await wallet_becomes(platform, customer_id, posted=FUNDS[Currency.USD], pending=35_000)
    assert await month_spent(platform, customer_id) == 35_000
    # So the month has exactly 1,000.00 - 350.00 of room left.
    for _ in range(2):
        assert (await authorize(platform, card_id, PER_PURCHASE)).decision_reason == "approved"
    room = MONTHLY - 35_000 - 2 * PER_PURCHASE
    assert (await authorize(platform, card_id, room + 1)).decision_reason == (
        "over_tier_monthly_limit"
    )
    assert (await authorize(platform, card_id, room)).decision_reason == "approved"
    await wallet_becomes(platform, customer_id, posted=FUNDS[Currency.USD], pending=MONTHLY)
    assert await month_spent(platform, customer_id) == MONTHLY
    assert await replays(platform, handle) is None
    assert await verify(platform.stack.pool) == []
