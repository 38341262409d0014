"""A top-up collects the customer's recorded debt (a lost dispute's shortfall
on `customer:{id}:debt:{CCY}`) from what it credited, net of fee: through the
bank simulator's signed webhooks and the gateway, proven by ledger balances."""

from __future__ import annotations

import asyncio
import uuid

from activities.events import events_after
from activities.ledger import Ledger
from schemas import accounts
from schemas.disputes import customer_debt, customer_debt_spec
from schemas.ledger import Rejection, TransferRequest
from schemas.money import Currency
from schemas.topup import TopupPolicy, TopupStatus
from starters import topup as starter
from tests.conftest import Platform
from tests.customers import EMPTY_WALLETS, customer
from tests.interruptions import balances_locked, until_waiting
from tests.workflows.test_topup import (
    assert_ledger_clean,
    bank_transfer,
    delivered_twice,
    handle_of,
    posted,
    result_of,
    run_id_of,
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
    customer_id = await customer(platform, EMPTY_WALLETS)
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
    # In the customer's feed: the credit, its fee and the debt it repaid, as
    # the wallet moved, each named by the top-up.
    events = await events_after(platform.stack.pool, 0, 100, customer_id=customer_id)
    assert sorted((e.type, e.data["amount_minor"]) for e in events) == [
        ("debt.collected", 3_000),
        ("fee.charged", 45),
        ("topup.credited", 10_000),
    ]
    assert {e.process_id for e in events} == {result.workflow_id}


async def test_a_top_up_smaller_than_the_debt_all_goes_to_the_debt(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 5_000)
    transfer = await bank_transfer(platform, customer_id, 2_000)
    result = await result_of(platform, "bank", transfer.id)
    # Fee 0.25 + 20 bps of 20.00 = 0.29: the 19.71 net all repays the debt.
    assert (result.outcome, result.debt_collected_minor) == ("credited", 1_971)
    assert await wallet(platform, customer_id) == 0
    assert await debt(platform, customer_id) == 5_000 - 1_971
    await assert_ledger_clean(platform)


async def test_a_customer_without_debt_keeps_the_whole_credit(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    transfer = await bank_transfer(platform, customer_id, 5_000)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 0)
    assert await wallet(platform, customer_id) == 5_000 - 35
    assert await debt(platform, customer_id) == 0
    await assert_ledger_clean(platform)


async def test_a_webhook_delivered_twice_collects_the_debt_once(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    transfer = await bank_transfer(platform, customer_id, 5_000)
    first = await result_of(platform, "bank", transfer.id)
    first_run = await run_id_of(platform, "bank", transfer.id)
    again = await starter.start_bank_topup(platform.stack.client, platform.stack.queues, transfer)
    assert (await again.result()).model_dump() == first.model_dump()
    await delivered_twice(platform, transfer.id)
    # Neither the second copy nor the second start ran the top-up again.
    assert await run_id_of(platform, "bank", transfer.id) == first_run
    assert first.debt_collected_minor == 1_000
    assert await wallet(platform, customer_id) == 5_000 - 35 - 1_000
    assert await debt(platform, customer_id) == 0
    await assert_ledger_clean(platform)


async def test_concurrent_top_ups_never_collect_more_than_the_debt(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
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
    customer_id = await customer(platform, EMPTY_WALLETS)
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


async def with_balance(platform: Platform, customer_id: str, amount_minor: int) -> int:
    """A top-up before the debt: the wallet's balance, net of its fee."""
    transfer = await bank_transfer(platform, customer_id, amount_minor)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 0)
    return await wallet(platform, customer_id)


async def test_a_debtor_with_a_balance_repays_from_the_credit_net_of_its_fee(
    platform: Platform,
) -> None:
    """The wallet could pay more, but a top-up repays from what it credited,
    net of its fee, never from the balance the customer already had."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    before = await with_balance(platform, customer_id, 5_000)
    await in_debt(platform, customer_id, 10_000)
    transfer = await bank_transfer(platform, customer_id, 2_000)
    result = await result_of(platform, "bank", transfer.id)
    # Fee 0.29 on 20.00: 19.71 repays the debt, the balance stays as it was.
    assert (result.fee_minor, result.debt_collected_minor) == (29, 1_971)
    assert await wallet(platform, customer_id) == before
    assert await debt(platform, customer_id) == 10_000 - 1_971
    await assert_ledger_clean(platform)


async def test_a_debt_between_the_credits_net_and_gross_is_repaid_by_the_net_only(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    before = await with_balance(platform, customer_id, 5_000)
    await in_debt(platform, customer_id, 1_990)
    transfer = await bank_transfer(platform, customer_id, 2_000)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.fee_minor, result.debt_collected_minor) == (29, 1_971)
    assert await debt(platform, customer_id) == 19
    assert await wallet(platform, customer_id) == before
    await assert_ledger_clean(platform)


async def test_the_debt_account_refuses_a_repayment_beyond_what_is_owed(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await with_balance(platform, customer_id, 5_000)
    await in_debt(platform, customer_id, 1_000)
    ledger = Ledger(platform.stack.pool)

    def repay(amount: int) -> TransferRequest:
        return TransferRequest(
            key=f"repay-{uuid.uuid4().hex[:10]}",
            debit=accounts.wallet(customer_id, "USD"),
            credit=customer_debt(customer_id, Currency.USD),
            amount_minor=amount,
            currency=Currency.USD,
        )

    assert (await ledger.transfer(repay(1_001))).rejection is Rejection.CREDITS_EXCEED_DEBITS
    assert (await ledger.transfer(repay(1_000))).accepted
    assert (await ledger.transfer(repay(1))).rejection is Rejection.CREDITS_EXCEED_DEBITS
    assert await debt(platform, customer_id) == 0


async def test_a_debt_repaid_while_a_top_up_credits_is_not_collected_again(
    platform: Platform,
) -> None:
    """The top-up read the debt before its credit; the debt is repaid
    another way while the credit waits on the wallet. Its collection of
    what it read is refused by the debt account, it reads the debt again,
    and collects nothing."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    before = await with_balance(platform, customer_id, 5_000)
    await in_debt(platform, customer_id, 1_000)
    ledger = Ledger(platform.stack.pool)
    wallet_code = accounts.wallet(customer_id, "USD")
    async with balances_locked(platform.stack.database_url, wallet_code) as lock:
        transfer = await bank_transfer(platform, customer_id, 2_000)
        await until_waiting(platform.stack.pool, lock)
        repaid = await ledger.transfer(
            TransferRequest(
                key=f"repaid-elsewhere-{customer_id}",
                debit=accounts.bank_inbound("USD"),
                credit=customer_debt(customer_id, Currency.USD),
                amount_minor=1_000,
                currency=Currency.USD,
            )
        )
        assert repaid.accepted
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 0)
    assert await debt(platform, customer_id) == 0
    assert await wallet(platform, customer_id) == before + 1_971
    await assert_ledger_clean(platform)
