"""A top-up collects the customer's recorded debt (a lost dispute's shortfall
on `customer:{id}:debt:{CCY}`) from what it credited, net of fee: through the
bank simulator's signed webhooks and the gateway, proven by ledger balances."""

from __future__ import annotations

import asyncio
import uuid

from activities.ledger import Ledger
from schemas import accounts
from schemas.disputes import customer_debt, customer_debt_spec
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.topup import TopupPolicy, TopupStatus
from starters import topup as starter
from tests.conftest import Platform
from tests.workflows.test_topup import (
    assert_ledger_clean,
    bank_transfer,
    customer,
    handle_of,
    posted,
    result_of,
    started_with,
    wallet,
)


async def in_debt(platform: Platform, customer_id: str, debt_minor: int) -> None:
    """Record `debt_minor` USD as the customer's debt, as a lost dispute does."""
    ledger = Ledger(platform.stack.pool)
    provisional = accounts.disputes_provisional(Currency.USD)
    await ledger.open_account(accounts.system_account(provisional))
    await ledger.open_account(customer_debt_spec(customer_id, Currency.USD))
    outcome = await ledger.transfer(
        TransferRequest(
            key=f"dispute/test-{uuid.uuid4().hex[:10]}/lost/debt/0",
            debit=customer_debt(customer_id, Currency.USD),
            credit=provisional,
            amount_minor=debt_minor,
            currency=Currency.USD,
        )
    )
    assert outcome.accepted, outcome


async def debt(platform: Platform, customer_id: str) -> int:
    """What the customer still owes (the debt account's debit balance)."""
    return -await posted(platform, customer_debt(customer_id, Currency.USD))


async def test_a_top_up_larger_than_the_debt_repays_it_and_credits_the_rest(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    await in_debt(platform, customer_id, 3_000)
    transfer = await bank_transfer(platform, customer_id, 10_000)
    result = await result_of(platform, "bank", transfer.id)
    # Fee 0.25 + 20 bps of 100.00 = 0.45; 99.55 net, 30.00 of it repays the debt.
    assert (result.outcome, result.credited_minor, result.fee_minor) == ("credited", 10_000, 45)
    assert result.debt_collected_minor == 3_000
    assert await debt(platform, customer_id) == 0
    assert await wallet(platform, customer_id) == 9_955 - 3_000
    status = await handle_of(platform, "bank", transfer.id).query("status", result_type=TopupStatus)
    assert status.debt_collected_minor == 3_000
    await assert_ledger_clean(platform)


async def test_a_top_up_smaller_than_the_debt_all_goes_to_the_debt(platform: Platform) -> None:
    customer_id = await customer(platform)
    await in_debt(platform, customer_id, 5_000)
    transfer = await bank_transfer(platform, customer_id, 2_000)
    result = await result_of(platform, "bank", transfer.id)
    # Fee 0.25 + 20 bps of 20.00 = 0.29: the 19.71 net all repays the debt.
    assert (result.outcome, result.debt_collected_minor) == ("credited", 1_971)
    assert await wallet(platform, customer_id) == 0
    assert await debt(platform, customer_id) == 5_000 - 1_971
    await assert_ledger_clean(platform)


async def test_a_customer_without_debt_keeps_the_whole_credit(platform: Platform) -> None:
    customer_id = await customer(platform)
    transfer = await bank_transfer(platform, customer_id, 5_000)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 0)
    assert await wallet(platform, customer_id) == 5_000 - 35
    assert await debt(platform, customer_id) == 0
    await assert_ledger_clean(platform)


async def test_a_webhook_delivered_twice_collects_the_debt_once(platform: Platform) -> None:
    customer_id = await customer(platform)
    await in_debt(platform, customer_id, 1_000)
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    transfer = await bank_transfer(platform, customer_id, 5_000)
    first = await result_of(platform, "bank", transfer.id)
    again = await starter.start_bank_topup(platform.stack.client, platform.stack.queues, transfer)
    assert (await again.result()).model_dump() == first.model_dump()
    assert first.debt_collected_minor == 1_000
    assert await wallet(platform, customer_id) == 5_000 - 35 - 1_000
    assert await debt(platform, customer_id) == 0
    await assert_ledger_clean(platform)


async def test_concurrent_top_ups_never_collect_more_than_the_debt(platform: Platform) -> None:
    customer_id = await customer(platform)
    await in_debt(platform, customer_id, 3_000)
    transfers = await asyncio.gather(
        bank_transfer(platform, customer_id, 2_000), bank_transfer(platform, customer_id, 2_000)
    )
    results = await asyncio.gather(*(result_of(platform, "bank", t.id) for t in transfers))
    # Each credits 19.71 net; together they repay exactly the 30.00 owed.
    assert sum(result.debt_collected_minor for result in results) == 3_000
    assert await debt(platform, customer_id) == 0
    assert await wallet(platform, customer_id) == 2 * 1_971 - 3_000
    await assert_ledger_clean(platform)


async def test_a_reversed_credit_gives_the_collection_back_and_the_debt_stands(
    platform: Platform,
) -> None:
    customer_id = await customer(platform)
    await in_debt(platform, customer_id, 1_000)
    platform.sim.fault(kind="error", path_prefix="/notify/v1/messages", status=503)
    transfer = await started_with(platform, TopupPolicy(receipt_attempts_max=2), customer_id, 8_000)
    result = await result_of(platform, "bank", transfer.id)
    assert result.outcome == "reversed" and result.debt_collected_minor == 0
    assert "credit of 80.00 USD and fee of 0.41 USD reversed" == result.compensation
    assert await debt(platform, customer_id) == 1_000
    assert await wallet(platform, customer_id) == 0
    assert await posted(platform, accounts.bank_inbound("USD")) == 0
    await assert_ledger_clean(platform)
