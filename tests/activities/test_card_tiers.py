"""A card's hold within its customer's KYC tier, at the database: the
tier's per-purchase limit and the month's spend over all the customer's
cards, checked and counted in the hold's own statement.

Each test asks the activity as a card's local activity asks it, on a real
ledger, and reads back the ledger and the month's count."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.card_tiers import CardTierActivities
from activities.customers import CustomerStore
from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas import accounts
from schemas.card_tiers import TierHoldOutcome, TierHoldRequest, default_tier_card_limits
from schemas.cards import DeclineReason
from schemas.customers import KycTier, TierChange
from schemas.ledger import AccountSpec, HoldRequest, Rejection, TransferRequest
from schemas.money import Currency
from tests.customers import new_id, profile, wallet_spec

MONTH = "2026-12"
NEXT_MONTH = "2027-01"
# The defaults' basic tier in USD: 250.00 a purchase, 1,000.00 a month.
BASIC = default_tier_card_limits()[KycTier.BASIC][Currency.USD]
PER_PURCHASE = BASIC.per_purchase_max_minor or 0
MONTHLY = BASIC.monthly_max_minor or 0
FUNDS_MINOR = 500_000


async def a_customer(pool: asyncpg.Pool, tier: KycTier | None, funds: int = FUNDS_MINOR) -> str:
    """A customer (with no record at all when `tier` is None) in `tier`,
    their USD wallet funded with `funds`, and the card settlement account."""
    customer_id = new_id("tier")
    ledger = Ledger(pool)
    if tier is not None:
        store = CustomerStore(pool)
        await store.save(profile(customer_id))
        await store.set_tier(customer_id, TierChange(tier=tier, reason="test"), "test")
    await ledger.open_account(wallet_spec(customer_id, Currency.USD))
    for code in (accounts.issuer_settlement(Currency.USD), "bank:inbound:USD"):
        await ledger.open_account(
            AccountSpec(code=code, currency=Currency.USD, kind="system", balance_slots=4)
        )
    if funds:
        await ledger.transfer(
            TransferRequest(
                key=f"fund-{customer_id}",
                debit="bank:inbound:USD",
                credit=accounts.wallet(customer_id, Currency.USD),
                amount_minor=funds,
                currency=Currency.USD,
            )
        )
    return customer_id


def asked(
    customer_id: str,
    amount_minor: int,
    *,
    key: str | None = None,
    month: str = MONTH,
    authorized_minor: int = 0,
    enforce: bool = True,
) -> TierHoldRequest:
    return TierHoldRequest(
        hold=HoldRequest(
            key=key or f"auth/{uuid.uuid4().hex}/d0",
            debit=accounts.wallet(customer_id, Currency.USD),
            credit=accounts.issuer_settlement(Currency.USD),
            amount_minor=amount_minor,
            currency=Currency.USD,
            expires_at=datetime.now(UTC) + timedelta(days=7),
        ),
        customer_id=customer_id,
        month=month,
        authorized_minor=authorized_minor,
        enforce=enforce,
    )


async def spent(pool: asyncpg.Pool, customer_id: str, month: str = MONTH) -> int:
    found = await pool.fetchval(
        "SELECT spent_minor FROM card_tier_spend"
        " WHERE customer_id = $1 AND currency = 'USD' AND month = $2",
        customer_id,
        month,
    )
    return int(found or 0)


async def pending(pool: asyncpg.Pool, customer_id: str) -> int:
    return (await Ledger(pool).balance(accounts.wallet(customer_id, Currency.USD))).debits_pending


def held(outcome: TierHoldOutcome) -> bool:
    return outcome.refusal is None and outcome.outcome is not None and outcome.outcome.accepted


async def test_a_basic_customers_holds_share_one_month_and_a_refusal_writes_nothing(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.BASIC)
    # Four purchases at the per-purchase limit, as if on two cards: the month's limit exactly.
    for _ in range(MONTHLY // PER_PURCHASE):
        outcome = await tiers.hold_within_tier(asked(customer_id, PER_PURCHASE))
        assert held(outcome) and outcome.tier is KycTier.BASIC, outcome
    assert await spent(ledger_pool, customer_id) == MONTHLY
    one_more_key = f"auth/one-more-{uuid.uuid4().hex}/d0"
    refused = await tiers.hold_within_tier(asked(customer_id, 1, key=one_more_key))
    assert (refused.refusal, refused.outcome, refused.spent_minor) == (
        DeclineReason.OVER_TIER_MONTHLY_LIMIT,
        None,
        MONTHLY,
    )
    assert "basic tier allows 100000 a month" in refused.detail
    # Nothing of it is written: no hold, no rejection under its key, no count.
    assert await pending(ledger_pool, customer_id) == MONTHLY
    for table in ("ledger_transfers", "ledger_rejections"):
        assert (
            await ledger_pool.fetchval(
                f"SELECT count(*) FROM {table} WHERE idempotency_key = $1",  # noqa: S608
                one_more_key,
            )
            == 0
        )
    assert await spent(ledger_pool, customer_id) == MONTHLY
    # The next month starts from zero, and other customers count on their own.
    assert held(await tiers.hold_within_tier(asked(customer_id, 1, month=NEXT_MONTH)))
    assert await spent(ledger_pool, customer_id, NEXT_MONTH) == 1
    assert await verify(ledger_pool) == []


async def test_the_per_purchase_limit_covers_what_the_authorization_was_already_approved_for(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.BASIC)
    over = await tiers.hold_within_tier(asked(customer_id, PER_PURCHASE + 1))
    assert over.refusal is DeclineReason.OVER_TIER_TRANSACTION_LIMIT
    # An increment of 60.00 on an authorization approved for 200.00 passes 250.00.
    increment = await tiers.hold_within_tier(asked(customer_id, 6_000, authorized_minor=20_000))
    assert increment.refusal is DeclineReason.OVER_TIER_TRANSACTION_LIMIT
    fits = await tiers.hold_within_tier(asked(customer_id, 5_000, authorized_minor=20_000))
    assert held(fits)
    assert (await spent(ledger_pool, customer_id), await pending(ledger_pool, customer_id)) == (
        5_000,
        5_000,
    )


async def test_a_hold_asked_again_is_its_replay_counted_once_even_after_the_tier_changed(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.STANDARD)
    request = asked(customer_id, 90_000)
    first = await tiers.hold_within_tier(request)
    assert held(first) and first.outcome is not None and not first.outcome.replayed
    # Moved to basic, whose 250.00 per purchase the hold is over: a retry of
    # the same hold (a task run again) is its first outcome, not a refusal.
    await CustomerStore(ledger_pool).set_tier(
        customer_id, TierChange(tier=KycTier.BASIC, reason="documents expired"), "test"
    )
    again = await tiers.hold_within_tier(request)
    assert again.refusal is None and again.outcome is not None
    assert again.outcome.replayed
    assert again.outcome.transfer_id == first.outcome.transfer_id
    assert await spent(ledger_pool, customer_id) == 90_000
    assert await pending(ledger_pool, customer_id) == 90_000
    # A new purchase that takes the month past 1,000.00 is refused by the new tier.
    assert held(await tiers.hold_within_tier(asked(customer_id, 10_000)))
    assert (await tiers.hold_within_tier(asked(customer_id, 1))).refusal is (
        DeclineReason.OVER_TIER_MONTHLY_LIMIT
    )


async def test_a_hold_the_ledger_refuses_counts_nothing_and_stays_refused(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.BASIC, funds=1_000)
    request = asked(customer_id, 2_000)
    for _ in range(2):
        outcome = await tiers.hold_within_tier(request)
        assert outcome.refusal is None and outcome.outcome is not None
        assert outcome.outcome.rejection is Rejection.INSUFFICIENT_FUNDS
    assert await spent(ledger_pool, customer_id) == 0


async def test_holds_the_issuer_already_approved_are_counted_and_never_refused(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.BASIC)
    stood_in = await tiers.hold_within_tier(asked(customer_id, MONTHLY + 500, enforce=False))
    assert held(stood_in)
    assert await spent(ledger_pool, customer_id) == MONTHLY + 500
    # The card's own next decision finds the month spent.
    assert (await tiers.hold_within_tier(asked(customer_id, 1))).refusal is (
        DeclineReason.OVER_TIER_MONTHLY_LIMIT
    )


@pytest.mark.parametrize(
    ("tier", "allowed"),
    [
        # A customer with no record is `standard`, the column's default.
        (None, 2_000_000),
        (KycTier.STANDARD, 2_000_000),
        (KycTier.ENHANCED, 50_000_000),
    ],
)
async def test_each_tier_allows_its_own_purchase_and_no_more(
    ledger_pool: asyncpg.Pool, tier: KycTier | None, allowed: int
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, tier, funds=100_000_000)
    assert held(await tiers.hold_within_tier(asked(customer_id, allowed)))
    over = await tiers.hold_within_tier(asked(customer_id, 100_000_000 - allowed + 1))
    assert over.tier is (tier or KycTier.STANDARD)
    assert over.refusal in {
        DeclineReason.OVER_TIER_TRANSACTION_LIMIT,
        DeclineReason.OVER_TIER_MONTHLY_LIMIT,
    }


async def test_concurrent_holds_on_one_customers_cards_never_pass_the_month_together(
    ledger_pool: asyncpg.Pool,
) -> None:
    """Forty purchases of 50.00 at once, on a month that has room for twenty:
    twenty are held, and the month counts exactly what is held."""
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.BASIC)
    outcomes = await asyncio.gather(
        *(tiers.hold_within_tier(asked(customer_id, 5_000)) for _ in range(40))
    )
    assert sum(held(outcome) for outcome in outcomes) == MONTHLY // 5_000
    assert all(
        outcome.refusal is DeclineReason.OVER_TIER_MONTHLY_LIMIT
        for outcome in outcomes
        if not held(outcome)
    )
    assert await spent(ledger_pool, customer_id) == MONTHLY
    assert await pending(ledger_pool, customer_id) == MONTHLY
    assert await verify(ledger_pool) == []


async def test_a_key_used_again_for_another_hold_is_a_final_error(
    ledger_pool: asyncpg.Pool,
) -> None:
    tiers = CardTierActivities(ledger_pool)
    customer_id = await a_customer(ledger_pool, KycTier.STANDARD)
    reused = f"auth/{uuid.uuid4().hex}/d0"
    assert held(await tiers.hold_within_tier(asked(customer_id, 1_000, key=reused)))
    with pytest.raises(ApplicationError) as raised:
        await tiers.hold_within_tier(asked(customer_id, 1_001, key=reused))
    assert (raised.value.type, raised.value.non_retryable) == ("IdempotencyConflict", True)
    assert await spent(ledger_pool, customer_id) == 1_000
