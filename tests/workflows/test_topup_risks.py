"""Top-ups where money is at risk: a credit the ledger refuses, a debt
collection refused or cut off and tried again until it runs out of attempts,
a USDT deposit and an operator-assigned payment repaying a debt, and a
cancellation at each point where one can reach a top-up. Each is driven the
way it happens (webhooks through the gateway, operators' updates, other
database sessions holding or moving the same money) and proven by the
ledger to the unit, the keys the top-up posted and refused, and its end state."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest
from asyncpg.transaction import Transaction
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError, CancelledError

from activities.ledger import Ledger
from activities.ledger.activities import SUBMIT_BATCH
from schemas import accounts
from schemas.disputes import customer_debt
from schemas.ledger import TransferOutcome, TransferRequest
from schemas.money import Currency
from schemas.search import PROCESS_STATUS
from schemas.topup import TopupPolicy, TopupResult, TopupStatus
from starters import topup as starter
from tests import polling
from tests.conftest import Platform
from tests.customers import EMPTY_WALLETS, customer
from tests.interruptions import (
    Lock,
    balances_locked,
    table_locked,
    until_activity_cancel_requested,
    until_waiting,
)
from tests.workflows.test_debt_collection import debt, in_debt
from tests.workflows.test_topup import (
    DEPOSIT_MINOR,
    FINALITY,
    OPERATOR,
    RECEIPT_RETRY_AFTER_SECONDS,
    STAGE_RECEIPT,
    approve,
    assert_ledger_clean,
    bank_transfer,
    chain,
    handle_of,
    posted,
    reach,
    result_of,
    started_with,
    status_when,
    wallet,
)
from workflows.topup_steps import STAGE_REVIEW

USD = Currency.USD
# A payer's reference that names no customer: the payment waits to be assigned.
UNMATCHED_REFERENCE = "INVOICE 2291"


# ----- what the ledger holds of one top-up ----------------------------------


async def postings(platform: Platform, workflow_id: str) -> dict[str, int]:
    """The transfers the top-up posted, by its step (the key less the workflow id)."""
    rows = await platform.stack.pool.fetch(
        "SELECT idempotency_key, amount_minor FROM ledger_transfers"
        " WHERE starts_with(idempotency_key, $1)",
        f"{workflow_id}/",
    )
    return {row[0].removeprefix(f"{workflow_id}/"): row[1] for row in rows}


async def refusals(platform: Platform, workflow_id: str) -> dict[str, str]:
    """The transfers of the top-up the ledger refused, by step, with the reason's code."""
    rows = await platform.stack.pool.fetch(
        "SELECT idempotency_key, code FROM ledger_rejections"
        " WHERE starts_with(idempotency_key, $1)",
        f"{workflow_id}/",
    )
    return {row[0].removeprefix(f"{workflow_id}/"): row[1] for row in rows}


async def usage_of(platform: Platform, workflow_id: str) -> tuple[str, int] | None:
    """The top-up's row in the daily-limit record: (status, amount), if it has one."""
    row = await platform.stack.pool.fetchrow(
        "SELECT status, amount_minor FROM topup_usage WHERE topup_id = $1", workflow_id
    )
    return None if row is None else (row["status"], row["amount_minor"])


async def until_refused(platform: Platform, key: str) -> None:
    """Until the ledger has recorded its refusal of the transfer `key`."""

    async def recorded() -> bool:
        found = await platform.stack.pool.fetchval(
            "SELECT count(*) FROM ledger_rejections WHERE idempotency_key = $1", key
        )
        return bool(found)

    await polling.eventually(recorded, f"the ledger refused {key}")


async def assert_posted(platform: Platform, expected: dict[str, int]) -> None:
    """Each account's posted balance (credits less debits), to the unit."""
    actual = {code: await posted(platform, code) for code in expected}
    assert actual == expected


async def cancelled(handle: WorkflowHandle[Any, TopupResult]) -> TopupStatus:
    """The top-up's status once it has ended cancelled (its result is the cancellation)."""
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert (await handle.describe()).typed_search_attributes.get(PROCESS_STATUS) == "cancelled"
    status: TopupStatus = await handle.query("status", result_type=TopupStatus)
    return status


def repaid_by_bank(customer_id: str, amount_minor: int) -> TransferRequest:
    """The customer repays part of the debt by a bank payment, outside any top-up."""
    return TransferRequest(
        key=f"debt-repaid-by-bank-{uuid.uuid4().hex[:10]}",
        debit=accounts.bank_inbound(USD),
        credit=customer_debt(customer_id, USD),
        amount_minor=amount_minor,
        currency=USD,
    )


# ----- another session holding, and moving, the same money ------------------


class HeldBalance:
    """Another database session holding one account's balance row (FOR UPDATE)
    until it is released: a posting that touches the account waits for it,
    while this session posts to the account itself (another process moving
    the same money at that very moment), visible to the waiter once released."""

    def __init__(self, connection: asyncpg.Connection, transaction: Transaction, pid: int) -> None:
        self._connection = connection
        self._transaction = transaction
        self.lock = Lock(pid=pid)

    async def post(self, request: TransferRequest) -> TransferOutcome:
        # The ledger's own API over this session (a Connection answers the
        # pool's fetch calls): the posting is part of the lock's transaction.
        return await Ledger(cast(asyncpg.Pool, self._connection)).transfer(request)

    async def release(self) -> None:
        """Commit what this session posted; the waiting posting goes on."""
        if not self._connection.is_closed():
            await self._transaction.commit()
            await self._connection.close()


@contextlib.asynccontextmanager
async def balance_held(database_url: str, code: str) -> AsyncIterator[HeldBalance]:
    connection = await asyncpg.connect(database_url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        held = HeldBalance(connection, transaction, pid)
        locked = await connection.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM ledger_balances b"
            " JOIN ledger_accounts a ON a.id = b.account_id"
            " WHERE a.code = $1 FOR UPDATE OF b) AS rows",
            code,
        )
        # A customer's account is constrained, so it has a single balance row.
        assert locked == 1, f"{code} has {locked} balance rows"
        yield held
    finally:
        # Not released: what the session posted is rolled back with it.
        if not connection.is_closed():
            await connection.close()


async def sessions_waiting(platform: Platform, lock: Lock) -> list[int]:
    rows = await platform.stack.pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", lock.pid
    )
    return [row[0] for row in rows]


async def until_another_waits(platform: Platform, lock: Lock, gone: int) -> None:
    """Until a session other than `gone` waits for the lock."""
    await polling.until(
        lambda: sessions_waiting(platform, lock),
        lambda waiting: any(pid != gone for pid in waiting),
        f"a session but {gone} came to wait for the lock",
    )


async def ledger_batch_attempts(handle: WorkflowHandle[Any, TopupResult]) -> list[int]:
    """The attempt on which each of the top-up's ledger batches completed, in order."""
    batches: set[int] = set()
    attempts: list[int] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name == SUBMIT_BATCH:
                batches.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in batches:
                attempts.append(started.attempt)
    return attempts


# ----- the ledger refuses the credit ----------------------------------------


async def test_a_credit_refused_by_the_ledger_fails_the_top_up_with_nothing_posted(
    platform: Platform,
) -> None:
    """A top-up above the maximum waits for review; meanwhile the customer's
    (empty) wallet is closed. The approved credit is refused as a whole, the
    usage the approval forced is released, and the top-up fails saying why."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    wallet_code = accounts.wallet(customer_id, USD)
    transfer = await bank_transfer(platform, customer_id, 2_000_000)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review is not None and status.pending_review.kind == "limit"
    assert await Ledger(platform.stack.pool).close_account(wallet_code)
    assert (
        await starter.review(platform.stack.client, "bank", transfer.id, approve())
        == "approve recorded"
    )

    handle = handle_of(platform, "bank", transfer.id)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CreditRefused"
    assert cause.message == (
        "the ledger refused the credit: account_closed batch rejected at item 1"
        f" ({handle.id}/credit/principal): {wallet_code} is closed"
    )
    status = await handle.query("status", result_type=TopupStatus)
    assert (status.stage, status.outcome) == ("failed", None)
    assert (status.credited_minor, status.fee_minor, status.debt_collected_minor) == (0, 0, 0)
    assert (await handle.describe()).typed_search_attributes.get(PROCESS_STATUS) == "failed"
    # Principal and fee were one batch: both refused, neither posted.
    assert await postings(platform, handle.id) == {}
    assert await refusals(platform, handle.id) == {
        "credit/principal": "account_closed",
        "credit/fee": "account_closed",
    }
    await assert_posted(
        platform,
        {wallet_code: 0, accounts.bank_inbound(USD): 0, accounts.revenue_fees(USD): 0},
    )
    assert await usage_of(platform, handle.id) == ("released", 2_000_000)
    await assert_ledger_clean(platform)


# ----- debt collection: refused, cut off, out of attempts ------------------


async def test_a_debt_collection_refused_after_a_repayment_elsewhere_collects_the_rest(
    platform: Platform,
) -> None:
    """The top-up read a debt of 30.00; while its collection waits on the debt
    account, the customer repays 10.00 by bank. The collection of 30.00 is
    refused; the top-up reads the debt again and collects the 20.00 left."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 3_000)
    async with balance_held(
        platform.stack.database_url, customer_debt(customer_id, USD)
    ) as elsewhere:
        transfer = await bank_transfer(platform, customer_id, 10_000)
        await until_waiting(platform.stack.pool, elsewhere.lock)
        assert (await elsewhere.post(repaid_by_bank(customer_id, 1_000))).accepted
        await elsewhere.release()
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.credited_minor, result.fee_minor) == ("credited", 10_000, 45)
    assert result.debt_collected_minor == 2_000
    assert await postings(platform, result.workflow_id) == {
        "credit/principal": 10_000,
        "credit/fee": 45,
        "debt/collect/2": 2_000,
    }
    assert await refusals(platform, result.workflow_id) == {
        "debt/collect/1": "credits_exceed_debits"
    }
    assert await debt(platform, customer_id) == 0
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 9_955 - 2_000,
            accounts.bank_inbound(USD): -10_000 - 1_000,
            accounts.revenue_fees(USD): 45,
        },
    )
    await assert_ledger_clean(platform)


async def test_a_debt_collection_cut_off_from_the_database_is_retried_and_collects_once(
    platform: Platform,
) -> None:
    """The collection's database session is killed while it waits on the debt
    account (a lost connection); the retry, with the same key, collects once."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 3_000)
    async with balances_locked(
        platform.stack.database_url, customer_debt(customer_id, USD)
    ) as lock:
        transfer = await bank_transfer(platform, customer_id, 10_000)
        await until_waiting(platform.stack.pool, lock)
        [collection] = await sessions_waiting(platform, lock)
        assert await platform.stack.pool.fetchval("SELECT pg_terminate_backend($1)", collection)
        await until_another_waits(platform, lock, collection)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 3_000)
    # The credit went through on its first attempt, the collection on its second.
    assert await ledger_batch_attempts(handle_of(platform, "bank", transfer.id)) == [1, 2]
    assert await postings(platform, result.workflow_id) == {
        "credit/principal": 10_000,
        "credit/fee": 45,
        "debt/collect/1": 3_000,
    }
    assert await refusals(platform, result.workflow_id) == {}
    assert await debt(platform, customer_id) == 0
    assert await wallet(platform, customer_id) == 9_955 - 3_000
    await assert_ledger_clean(platform)


async def test_a_debt_collection_refused_on_every_attempt_leaves_the_rest_owed(
    platform: Platform,
) -> None:
    """Each of the policy's two collections is refused: each time the debt was
    partly repaid by bank while the collection waited on it. The credit
    stands whole, nothing is collected, and the debt left stays owed."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    debt_code = customer_debt(customer_id, USD)
    await in_debt(platform, customer_id, 3_000)
    policy = TopupPolicy(debt_collection_attempts_max=2)
    database_url = platform.stack.database_url
    async with contextlib.AsyncExitStack() as sessions:
        first = await sessions.enter_async_context(balance_held(database_url, debt_code))
        transfer = await started_with(platform, policy, customer_id, 10_000)
        workflow_id = handle_of(platform, "bank", transfer.id).id
        await until_waiting(platform.stack.pool, first.lock)
        # The first collection (30.00) is refused while no workflow worker
        # runs, so the second cannot start before the debt account is held again.
        async with platform.stack.workflows_worker_away():
            assert (await first.post(repaid_by_bank(customer_id, 1_000))).accepted
            await first.release()
            await until_refused(platform, f"{workflow_id}/debt/collect/1")
            second = await sessions.enter_async_context(balance_held(database_url, debt_code))
        # The second collection (the 20.00 it read) waits; 15.00 more is repaid.
        await until_waiting(platform.stack.pool, second.lock)
        assert (await second.post(repaid_by_bank(customer_id, 1_500))).accepted
        await second.release()
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.credited_minor, result.fee_minor) == ("credited", 10_000, 45)
    assert result.debt_collected_minor == 0
    assert await postings(platform, workflow_id) == {
        "credit/principal": 10_000,
        "credit/fee": 45,
    }
    assert await refusals(platform, workflow_id) == {
        "debt/collect/1": "credits_exceed_debits",
        "debt/collect/2": "credits_exceed_debits",
    }
    assert await debt(platform, customer_id) == 3_000 - 1_000 - 1_500
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 9_955,
            accounts.bank_inbound(USD): -10_000 - 2_500,
            accounts.revenue_fees(USD): 45,
        },
    )
    assert await usage_of(platform, workflow_id) == ("credited", 10_000)
    await assert_ledger_clean(platform)


# ----- a USDT deposit repays a debt ----------------------------------------


async def test_a_usdt_deposit_repays_a_debt_from_its_credit_net_of_fee(
    platform: Platform,
) -> None:
    """10 USDT credit 9.97 USD less a 0.09 fee: the 9.88 net repays a debt of
    9.90 as far as it goes; 0.02 stays owed and the wallet keeps nothing."""
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 990)
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await starter.mine_blocks(platform.settings, FINALITY)
    result = await result_of(platform, "usdt", deposit.tx_hash)
    assert (result.outcome, result.customer_id, result.wallet_currency) == (
        "credited",
        customer_id,
        USD,
    )
    assert (result.credited_minor, result.fee_minor, result.debt_collected_minor) == (997, 9, 988)
    steps = await postings(platform, result.workflow_id)
    assert {step: amount for step, amount in steps.items() if step.startswith("debt/")} == {
        "debt/collect/1": 988
    }
    assert await debt(platform, customer_id) == 2
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 0,
            accounts.crypto_custody(): -DEPOSIT_MINOR,
            accounts.fx_pool("USDT"): DEPOSIT_MINOR,
            accounts.fx_pool(USD): -1_000,
            accounts.revenue_fx(USD): 2,
            accounts.fx_rounding(USD): 1,
            accounts.revenue_fees(USD): 9,
        },
    )
    await assert_ledger_clean(platform)


# ----- an unmatched payment assigned to a debtor ---------------------------


async def test_an_unmatched_payment_assigned_to_a_debtor_repays_the_debt_net_of_fee(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    transfer = await bank_transfer(platform, UNMATCHED_REFERENCE, 7_000)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review is not None and status.pending_review.kind == "unmatched"
    assert (
        await starter.review(
            platform.stack.client, "bank", transfer.id, approve(customer_id=customer_id)
        )
        == f"approve to {customer_id} recorded"
    )
    result = await result_of(platform, "bank", transfer.id)
    # Fee 0.25 + 20 bps of 70.00 = 0.39; 10.00 of the 69.61 net repays the debt.
    assert (result.outcome, result.customer_id, result.reviewed_by) == (
        "credited",
        customer_id,
        OPERATOR,
    )
    assert (result.credited_minor, result.fee_minor, result.debt_collected_minor) == (
        7_000,
        39,
        1_000,
    )
    assert await postings(platform, result.workflow_id) == {
        "credit/principal": 7_000,
        "credit/fee": 39,
        "debt/collect/1": 1_000,
    }
    assert await debt(platform, customer_id) == 0
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 6_961 - 1_000,
            accounts.bank_inbound(USD): -7_000,
            accounts.revenue_fees(USD): 39,
        },
    )
    await assert_ledger_clean(platform)


async def test_two_operators_assigning_one_payment_collect_only_the_chosen_customers_debt(
    platform: Platform,
) -> None:
    """Two operators assign the same unmatched payment at once, one to a
    customer without debt, one to a customer owing 10.00. One assignment
    wins; the payment is credited to that customer and only that customer's
    own debt is collected from it."""
    clear = await customer(platform, EMPTY_WALLETS)
    owing = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, owing, 1_000)
    transfer = await bank_transfer(platform, UNMATCHED_REFERENCE, 7_000)
    await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    database_url = platform.stack.database_url
    wallets = (accounts.wallet(clear, USD), accounts.wallet(owing, USD))
    # The credit waits until both reviews are answered.
    async with balances_locked(database_url, *wallets):
        # Each review's match of its customer waits on the customers table:
        # both are past the review's validation before either is decided.
        async with table_locked(database_url, "customers") as matching:
            reviews = []
            for count, customer_id in enumerate((clear, owing), start=1):
                reviews.append(
                    asyncio.ensure_future(
                        starter.review(
                            platform.stack.client,
                            "bank",
                            transfer.id,
                            approve(customer_id=customer_id),
                        )
                    )
                )
                await until_waiting(platform.stack.pool, matching, count)
        answers = await asyncio.gather(*reviews, return_exceptions=True)
    winners = [
        customer_id
        for customer_id, answer in zip((clear, owing), answers, strict=True)
        if answer == f"approve to {customer_id} recorded"
    ]
    losers = [answer for answer in answers if isinstance(answer, WorkflowUpdateFailedError)]
    assert len(winners) == 1 and len(losers) == 1, answers
    assert "this review was already decided" in str(losers[0].cause)
    [chosen] = winners
    result = await result_of(platform, "bank", transfer.id)
    collected = 1_000 if chosen == owing else 0
    assert (result.outcome, result.customer_id, result.debt_collected_minor) == (
        "credited",
        chosen,
        collected,
    )
    await assert_posted(
        platform,
        {
            accounts.wallet(chosen, USD): 6_961 - collected,
            customer_debt(owing, USD): -(1_000 - collected),
            accounts.bank_inbound(USD): -7_000,
        },
    )
    await assert_ledger_clean(platform)


# ----- cancellation -----------------------------------------------------------


async def test_a_top_up_cancelled_in_review_posts_nothing(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    transfer = await bank_transfer(platform, customer_id, 2_000_000)
    await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    handle = handle_of(platform, "bank", transfer.id)
    await handle.cancel()
    status = await cancelled(handle)
    assert (status.stage, status.credited_minor, status.compensation) == ("cancelled", 0, "")
    assert await postings(platform, handle.id) == {}
    assert await refusals(platform, handle.id) == {}
    assert await usage_of(platform, handle.id) is None
    assert await debt(platform, customer_id) == 1_000
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 0,
            accounts.bank_inbound(USD): 0,
            accounts.revenue_fees(USD): 0,
        },
    )
    await assert_ledger_clean(platform)


async def test_a_top_up_cancelled_while_reserving_its_usage_releases_the_reservation(
    platform: Platform,
) -> None:
    """The reservation waits on the daily-limit record and commits after the
    cancellation: the top-up learns so and releases it, crediting nothing."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    async with table_locked(platform.stack.database_url, "topup_usage") as lock:
        transfer = await bank_transfer(platform, customer_id, 5_000)
        await until_waiting(platform.stack.pool, lock)
        handle = handle_of(platform, "bank", transfer.id)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    status = await cancelled(handle)
    assert (status.stage, status.credited_minor) == ("cancelled", 0)
    assert await usage_of(platform, handle.id) == ("released", 5_000)
    assert await postings(platform, handle.id) == {}
    await assert_posted(
        platform, {accounts.wallet(customer_id, USD): 0, accounts.bank_inbound(USD): 0}
    )
    await assert_ledger_clean(platform)


async def assert_collection_and_credit_undone(
    platform: Platform, customer_id: str, workflow_id: str, status: TopupStatus
) -> None:
    """A cancelled 100.00 top-up that had collected a 10.00 debt: the
    collection, the fee and the credit reversed in that order, the debt owed
    again, every account back where it was and the day's usage released."""
    assert status.stage == "cancelled"
    assert status.compensation == "credit of 100.00 USD and fee of 0.45 USD reversed"
    assert await postings(platform, workflow_id) == {
        "credit/principal": 10_000,
        "credit/fee": 45,
        "debt/collect/1": 1_000,
        "debt/collect/1/reversal": 1_000,
        "credit/fee/reversal": 45,
        "credit/principal/reversal": 10_000,
    }
    assert await debt(platform, customer_id) == 1_000
    await assert_posted(
        platform,
        {
            accounts.wallet(customer_id, USD): 0,
            accounts.bank_inbound(USD): 0,
            accounts.revenue_fees(USD): 0,
        },
    )
    assert await usage_of(platform, workflow_id) == ("released", 10_000)
    await assert_ledger_clean(platform)


async def test_a_top_up_cancelled_while_collecting_debt_gives_back_collection_and_credit(
    platform: Platform,
) -> None:
    """The collection waits on the debt account and commits after the
    cancellation: the top-up learns so, gives the collection back to the
    wallet, then reverses the credit and fee; the debt stands as before."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    async with balances_locked(
        platform.stack.database_url, customer_debt(customer_id, USD)
    ) as lock:
        transfer = await bank_transfer(platform, customer_id, 10_000)
        await until_waiting(platform.stack.pool, lock)
        handle = handle_of(platform, "bank", transfer.id)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    status = await cancelled(handle)
    assert status.debt_collected_minor == 0
    await assert_collection_and_credit_undone(platform, customer_id, handle.id, status)


async def test_a_top_up_cancelled_while_sending_its_receipt_reverses_collection_and_credit(
    platform: Platform,
) -> None:
    """Credited and the debt collected, the receipt is told to come back
    later; the cancellation then undoes the collection, the fee and the credit."""
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    platform.sim.fault(
        kind="rate_limit",
        path_prefix="/notify/v1/messages",
        seconds=RECEIPT_RETRY_AFTER_SECONDS,
        times=1,
    )
    transfer = await bank_transfer(platform, customer_id, 10_000)
    status = await status_when(
        platform,
        "bank",
        transfer.id,
        lambda status: status.stage == STAGE_RECEIPT and status.debt_collected_minor == 1_000,
        "collected the debt and began sending the receipt",
    )
    assert await wallet(platform, customer_id) == 9_955 - 1_000
    handle = handle_of(platform, "bank", transfer.id)
    await handle.cancel()
    status = await cancelled(handle)
    await assert_collection_and_credit_undone(platform, customer_id, handle.id, status)


async def test_a_credited_top_up_can_no_longer_be_cancelled(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await in_debt(platform, customer_id, 1_000)
    transfer = await bank_transfer(platform, customer_id, 10_000)
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.debt_collected_minor) == ("credited", 1_000)
    handle = handle_of(platform, "bank", transfer.id)
    await handle.cancel()
    # The request reaches a closed workflow: no task runs, nothing is undone.
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert (await handle.result()).model_dump() == result.model_dump()
    assert await postings(platform, handle.id) == {
        "credit/principal": 10_000,
        "credit/fee": 45,
        "debt/collect/1": 1_000,
    }
    assert await debt(platform, customer_id) == 0
    assert await wallet(platform, customer_id) == 9_955 - 1_000
    await assert_ledger_clean(platform)
