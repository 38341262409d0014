"""Withdrawals through the bank simulator, its real webhooks and the gateway:
held, paid once, posted when sent, voided when the bank fails, credited back
once when the bank returns it; a lost answer, a worker killed between the
hold and the payout, duplicated webhooks: still one payout; the tier's
limits and a new destination's wait or review."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from activities.ledger import Ledger
from activities.ledger.verify import verify
from activities.providers.bank import BankClient
from activities.providers.tron import TronClient
from schemas import accounts
from schemas.bank import Payout
from schemas.customers import KycTier
from schemas.money import Currency
from schemas.withdrawals import (
    BankDestination,
    TierLimits,
    TronDestination,
    WithdrawalInput,
    WithdrawalPolicy,
    WithdrawalResult,
    WithdrawalReview,
    WithdrawalStatus,
)
from tests import polling
from tests.conftest import Platform
from tests.customers import customer
from tests.interruptions import balances_locked, until_activity_cancel_requested, until_waiting
from workflows.withdrawal import (
    REVIEW_UPDATE,
    STAGE_COOLING,
    STAGE_REVIEW,
    STAGE_SENT,
    STAGE_WAITING,
    WITHDRAWAL_WORKFLOW,
    withdrawal_workflow_id,
)

ADA_IBAN = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
FEE = 100  # the default policy's 1.00 USD
FUNDS = {Currency.USD: 10_000}
# Fast waits; a destination's first withdrawal neither waits nor needs review
# unless a test says so.
QUICK = WithdrawalPolicy(
    new_destination_cooling_seconds=0,
    new_destination_review_minor={Currency.USD: 10**12},
    outcome_poll_seconds=1,
    return_watch_seconds=0,
)


def bank(platform: Platform) -> BankClient:
    return BankClient(platform.sim.provider_url("bank"))


async def start(
    platform: Platform,
    customer_id: str,
    amount_minor: int,
    policy: WithdrawalPolicy = QUICK,
    destination: BankDestination | TronDestination = ADA_IBAN,
) -> WorkflowHandle[Any, WithdrawalResult]:
    queues = platform.stack.queues
    request_id = f"w-{uuid.uuid4().hex[:12]}"
    return await platform.stack.client.start_workflow(
        WITHDRAWAL_WORKFLOW,
        WithdrawalInput(
            request_id=request_id,
            customer_id=customer_id,
            amount_minor=amount_minor,
            currency=Currency.USD,
            destination=destination,
            requested_at=datetime.now(UTC),
            policy=policy,
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
        ),
        id=withdrawal_workflow_id(request_id),
        task_queue=queues.workflows,
        result_type=WithdrawalResult,
    )


async def reach(
    handle: WorkflowHandle[Any, Any], stage: str, seconds: float = 20
) -> WithdrawalStatus:
    async def status() -> WithdrawalStatus:
        found: WithdrawalStatus = await handle.query("status", result_type=WithdrawalStatus)
        return found

    return await polling.until(
        status, lambda found: found.stage == stage, f"reached {stage!r}", seconds
    )


async def payouts(platform: Platform, request_id: str) -> list[Payout]:
    async with bank(platform) as client:
        return await client.payouts_by_reference(request_id)


async def the_payout(platform: Platform, handle: WorkflowHandle[Any, Any]) -> Payout:
    """The one payout the bank holds for this withdrawal, once it holds it."""
    request_id = handle.id.removeprefix("withdrawal/")
    found = await polling.until(
        lambda: payouts(platform, request_id), bool, "the bank has the payout"
    )
    assert len(found) == 1, found
    return found[0]


async def events_of(platform: Platform, customer_id: str) -> list[tuple[str, int]]:
    """The customer's money events (type, posted amount), sorted."""
    rows = await platform.stack.pool.fetch(
        "SELECT type, posted_minor FROM customer_events"
        " WHERE customer_id = $1 AND posted_minor IS NOT NULL",
        customer_id,
    )
    return sorted((row["type"], row["posted_minor"]) for row in rows)


async def usage(platform: Platform, request_id: str) -> str | None:
    found: str | None = await platform.stack.pool.fetchval(
        "SELECT status FROM withdrawal_usage WHERE request_id = $1", request_id
    )
    return found


async def test_held_then_posted_when_the_bank_sends_it_and_the_account_is_known_after(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    handle = await start(platform, customer_id, 5_000)
    waiting = await reach(handle, STAGE_WAITING)
    assert waiting.new_destination and waiting.fee_minor == FEE
    payout = await the_payout(platform, handle)
    assert (payout.status, payout.amount_minor, payout.destination_iban) == (
        "accepted",
        5_000,
        ADA_IBAN.iban,
    )
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    # Held, not posted, while the bank has not sent it.
    assert (wallet.posted, wallet.debits_pending) == (10_000, 5_100)
    async with bank(platform) as client:
        await client.simulate_payout_sent(payout.id, idempotency_key=f"send-{payout.id}")
    result = await handle.result()
    assert (result.outcome, result.payout_id, result.fee_minor) == ("paid", payout.id, FEE)
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000 - 5_100, 0)
    assert await usage(platform, result.request_id) == "paid"
    assert await verify(platform.stack.pool) == []
    # The customer's events tell the same story as the ledger.
    assert await events_of(platform, customer_id) == [
        ("adjustment.credited", 10_000),
        ("fee.charged", -FEE),
        ("withdrawal.paid", -5_000),
    ]

    # The same account again: no longer new.
    again = await start(platform, customer_id, 1_000)
    status = await reach(again, STAGE_WAITING)
    assert not status.new_destination


async def test_a_return_after_sending_credits_the_principal_back_once(platform: Platform) -> None:
    customer_id = await customer(platform, FUNDS)
    policy = QUICK.model_copy(update={"return_watch_seconds": 60})
    handle = await start(platform, customer_id, 4_000, policy)
    payout = await the_payout(platform, handle)
    # Every bank webhook arrives twice.
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    async with bank(platform) as client:
        await client.simulate_payout_sent(payout.id, idempotency_key=f"send-{payout.id}")
        await reach(handle, STAGE_SENT)
        await client.simulate_payout_returned(
            payout.id, "account_closed", idempotency_key=f"return-{payout.id}"
        )
    result = await handle.result()
    assert (result.outcome, result.reason) == ("returned", "the bank returned it: account_closed")
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    # The principal came back; the fee was earned.
    assert (wallet.posted, wallet.debits_pending) == (10_000 - FEE, 0)
    assert await events_of(platform, customer_id) == [
        ("adjustment.credited", 10_000),
        ("fee.charged", -FEE),
        ("withdrawal.paid", -4_000),
        ("withdrawal.returned", 4_000),
    ]
    assert await verify(platform.stack.pool) == []


async def test_a_payout_the_bank_fails_voids_the_holds_and_releases_the_month(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    handle = await start(platform, customer_id, 3_000)
    payout = await the_payout(platform, handle)
    async with bank(platform) as client:
        await client.simulate_payout_failed(
            payout.id, "beneficiary_bank_offline", idempotency_key=f"fail-{payout.id}"
        )
    result = await handle.result()
    assert result.outcome == "failed" and "beneficiary_bank_offline" in result.reason
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000, 0)
    assert await usage(platform, result.request_id) == "released"
    assert await verify(platform.stack.pool) == []


async def test_a_create_whose_answer_is_lost_makes_one_payout(platform: Platform) -> None:
    customer_id = await customer(platform, FUNDS)
    # The bank makes the payout, but its answer never comes: the client gives up.
    platform.sim.fault(
        path_prefix="/bank/v1/payouts", method="POST", kind="answer_lost", seconds=6, times=1
    )
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    handle = await start(platform, customer_id, 2_000)
    result = await handle.result()
    assert result.outcome == "paid"
    [payout] = await payouts(platform, result.request_id)
    assert payout.id == result.payout_id and payout.status == "sent"
    # The fault fired: the first ask timed out, the retry found the payout made.
    assert platform.sim.admin("GET", "/faults") == []
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000 - 2_100, 0)


async def test_a_worker_killed_between_the_hold_and_the_payout_makes_one_payout(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    stack = platform.stack
    wallet_code = accounts.wallet(customer_id, Currency.USD)
    locked: Any = balances_locked(stack.database_url, wallet_code)
    lock = await locked.__aenter__()
    try:
        handle = await start(platform, customer_id, 2_000)
        # The hold waits on the wallet's rows; the workflows worker dies meanwhile.
        await until_waiting(stack.pool, lock)
        async with stack.workflows_worker_away():
            releasing, locked = locked, None
            await releasing.__aexit__(None, None, None)
            # The hold commits with no workflows worker to hear of it.
            await activities_completed(handle, 3)
    finally:
        if locked is not None:
            await locked.__aexit__(None, None, None)
    result = await handle.result()
    assert result.outcome == "paid"
    assert len(await payouts(platform, result.request_id)) == 1
    wallet = await Ledger(stack.pool).balance(wallet_code)
    assert (wallet.posted, wallet.debits_pending) == (10_000 - 2_100, 0)
    assert await verify(stack.pool) == []


async def activities_completed(handle: WorkflowHandle[Any, Any], count: int) -> None:
    """Until the history has `count` completed activities (here: the check,
    the outbound account's opening and the hold)."""

    async def completed() -> bool:
        found = 0
        async for event in handle.fetch_history_events():
            found += event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        return found >= count

    await polling.eventually(completed, f"{count} activities completed")


async def test_limits_and_money_refuse_before_anything_is_held(platform: Platform) -> None:
    customer_id = await customer(platform, FUNDS)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    standard = TierLimits(per_withdrawal_max_minor=5_000, monthly_max_minor=8_000)
    policy = QUICK.model_copy(update={"limits": {KycTier.STANDARD: {Currency.USD: standard}}})
    over = await (await start(platform, customer_id, 5_001, policy)).result()
    assert (over.outcome, over.reason) == (
        "rejected",
        "above the standard tier's 5000 minor units per withdrawal",
    )
    paid = await (await start(platform, customer_id, 5_000, policy)).result()
    assert paid.outcome == "paid"
    month = await (await start(platform, customer_id, 4_000, policy)).result()
    assert month.outcome == "rejected"
    assert month.reason.startswith("above the standard tier's monthly limit: 3000 minor units")
    # What the wallet holds (4,900) cannot cover 4,850 and the fee.
    poor = await (await start(platform, customer_id, 4_850)).result()
    assert poor.outcome == "rejected" and poor.reason.startswith("the wallet cannot cover it")
    await platform.stack.pool.execute(
        "UPDATE customers SET kyc_tier = 'basic' WHERE customer_id = $1", customer_id
    )
    basic = await (await start(platform, customer_id, 100)).result()
    assert (basic.outcome, basic.reason) == ("rejected", "the basic tier cannot withdraw USD")
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000 - 5_100, 0)
    for refused in (over, month, poor, basic):
        assert await payouts(platform, refused.request_id) == []
        assert await usage(platform, refused.request_id) in (None, "released")


async def test_a_new_account_above_the_threshold_waits_for_an_operator(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    policy = QUICK.model_copy(update={"new_destination_review_minor": {Currency.USD: 1_000}})
    handle = await start(platform, customer_id, 2_000, policy)
    await reach(handle, STAGE_REVIEW)
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert wallet.debits_pending == 0  # nothing is held while an operator looks
    await handle.execute_update(
        REVIEW_UPDATE,
        WithdrawalReview(decision="reject", reason="not the customer's name", operator="op-1"),
    )
    result = await handle.result()
    assert (result.outcome, result.reason) == (
        "rejected",
        "operator op-1: not the customer's name",
    )
    assert await usage(platform, result.request_id) == "released"
    assert await payouts(platform, result.request_id) == []


async def test_a_new_account_below_the_threshold_waits_its_cooling_period(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    platform.sim.admin("PUT", "/options/bank", {"payouts_auto_send": True})
    policy = QUICK.model_copy(update={"new_destination_cooling_seconds": 2})
    handle = await start(platform, customer_id, 1_000, policy)
    cooling = await reach(handle, STAGE_COOLING)
    assert cooling.cooling_until is not None and cooling.new_destination
    # Nothing went to the bank during the wait.
    assert await payouts(platform, cooling.request_id) == []
    assert (await handle.result()).outcome == "paid"


async def an_address(platform: Platform) -> TronDestination:
    """A valid Tron address outside custody (the simulator's, for another owner)."""
    async with TronClient(platform.sim.provider_url("tron")) as tron:
        found = await tron.customer_address(f"elsewhere-{uuid.uuid4().hex[:8]}")
    return TronDestination(rail="usdt", address=found.address)


async def test_usdt_is_sent_at_a_firm_quote_and_posted_once_final(platform: Platform) -> None:
    customer_id = await customer(platform, FUNDS)
    destination = await an_address(platform)
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    handle = await start(platform, customer_id, 5_000, destination=destination)
    waiting = await reach(handle, STAGE_WAITING)
    # 0.5% and 1.00 USD: 1.25 USD.
    assert waiting.fee_minor == 125 and waiting.payout_id is not None
    async with TronClient(platform.sim.provider_url("tron")) as tron:
        sent = await tron.get_withdrawal(waiting.payout_id)
        assert (sent.to_address, sent.status) == (destination.address, "confirming")
        wallet = await Ledger(platform.stack.pool).balance(
            accounts.wallet(customer_id, Currency.USD)
        )
        assert (wallet.posted, wallet.debits_pending) == (10_000, 5_125)
        await tron.mine_blocks(19, idempotency_key=f"mine-{uuid.uuid4()}")
    result = await handle.result()
    assert (result.outcome, result.payout_id) == ("paid", sent.tx_hash)
    ledger = Ledger(platform.stack.pool)
    wallet = await ledger.balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000 - 5_125, 0)
    # Custody paid out exactly what the chain sent, once (webhooks came twice).
    custody_moves = await platform.stack.pool.fetch(
        "SELECT t.amount_minor FROM ledger_transfers t JOIN ledger_accounts a"
        " ON a.id = t.credit_account_id WHERE a.code = 'crypto:custody:USDT'"
        " AND t.idempotency_key LIKE $1",
        f"{handle.id}/%",
    )
    assert [row["amount_minor"] for row in custody_moves] == [sent.amount_minor]
    assert await verify(platform.stack.pool) == []


async def test_a_usdt_send_that_fails_voids_the_holds(platform: Platform) -> None:
    customer_id = await customer(platform, FUNDS)
    handle = await start(platform, customer_id, 3_000, destination=await an_address(platform))
    waiting = await reach(handle, STAGE_WAITING)
    assert waiting.payout_id is not None
    async with TronClient(platform.sim.provider_url("tron")) as tron:
        await tron.simulate_withdrawal_failed(
            waiting.payout_id, "out_of_energy", idempotency_key=f"fail-{waiting.payout_id}"
        )
    result = await handle.result()
    assert (result.outcome, result.reason) == ("failed", "custody could not pay: out_of_energy")
    wallet = await Ledger(platform.stack.pool).balance(accounts.wallet(customer_id, Currency.USD))
    assert (wallet.posted, wallet.debits_pending) == (10_000, 0)
    assert await verify(platform.stack.pool) == []


async def test_a_withdrawal_cancelled_while_its_hold_is_on_its_way_holds_nothing(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, FUNDS)
    stack = platform.stack
    wallet_code = accounts.wallet(customer_id, Currency.USD)
    locked: Any = balances_locked(stack.database_url, wallet_code)
    lock = await locked.__aenter__()
    try:
        handle = await start(platform, customer_id, 2_000)
        # The hold waits on the wallet's rows when the cancellation comes; it
        # commits after, with the process no longer waiting for it.
        await until_waiting(stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    finally:
        await locked.__aexit__(None, None, None)
    result = await handle.result()
    assert result.outcome == "cancelled"
    wallet = await Ledger(stack.pool).balance(wallet_code)
    assert (wallet.posted, wallet.debits_pending) == (10_000, 0)
    assert await usage(platform, result.request_id) == "released"
    assert await payouts(platform, result.request_id) == []
    assert await verify(stack.pool) == []
