"""Top-ups through the bank and Tron simulators, their signed webhooks and the
gateway: credits and fees to the unit, limits and reviews, unmatched
payments, confirmations, reorgs, out-of-order webhooks, FX faults, and the
reversal of a credit when a later step fails for good."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import AccountNotFound, Ledger
from activities.ledger.verify import verify
from activities.providers.quotes import FX_QUOTE
from activities.topups import TopupActivities
from schemas import accounts
from schemas.bank import InboundTransfer
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.topup import (
    TopupLimits,
    TopupPolicy,
    TopupResult,
    TopupReview,
    TopupSource,
    TopupStatus,
    UsageReservation,
    UsageStatusChange,
)
from schemas.tron import Deposit
from starters import topup as starter
from tests import polling
from tests.conftest import Platform
from tests.customers import EMPTY_WALLETS, customer, fund
from tests.interruptions import balances_locked, until_activity_cancel_requested, until_waiting
from workflows.topup import REVIEW_UPDATE, topup_workflow_id
from workflows.topup_steps import STAGE_CONFIRMATIONS, STAGE_REVIEW

FINALITY = 3
OPERATOR = "op-jane"


async def posted(platform: Platform, code: str) -> int:
    """Credits less debits; 0 for an account nothing ever opened."""
    try:
        return (await Ledger(platform.stack.pool).balance(code)).posted
    except AccountNotFound:
        return 0


async def wallet(platform: Platform, customer_id: str, currency: str = "USD") -> int:
    return await posted(platform, accounts.wallet(customer_id, currency))


def handle_of(
    platform: Platform, source: TopupSource, external_ref: str
) -> WorkflowHandle[Any, TopupResult]:
    return platform.stack.client.get_workflow_handle(
        topup_workflow_id(source, external_ref), result_type=TopupResult
    )


async def result_of(
    platform: Platform, source: TopupSource, external_ref: str, seconds: float = 30
) -> TopupResult:
    """The top-up's result, once a webhook has started it and it has finished."""
    handle = handle_of(platform, source, external_ref)

    async def result() -> TopupResult | None:
        try:
            return await handle.result()
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return None  # not started yet

    found = await polling.until(
        result, lambda answer: answer is not None, f"{handle.id} started", seconds
    )
    assert found is not None
    return found


async def status_when(
    platform: Platform,
    source: TopupSource,
    external_ref: str,
    holds: Callable[[TopupStatus], bool],
    what: str,
    seconds: float = 20,
) -> TopupStatus:
    """The top-up's status once `holds` is true of it; fails saying `what`
    it waited for when `seconds` pass first."""
    handle = handle_of(platform, source, external_ref)

    async def status() -> TopupStatus | None:
        try:
            answer: TopupStatus = await handle.query("status", result_type=TopupStatus)
        except RPCError as error:
            if error.status is not RPCStatusCode.NOT_FOUND:
                raise
            return None  # not started yet
        return answer

    found = await polling.until(
        status, lambda answer: answer is not None and holds(answer), f"{handle.id} {what}", seconds
    )
    assert found is not None
    return found


async def reach(
    platform: Platform, source: TopupSource, external_ref: str, stage: str, seconds: float = 20
) -> TopupStatus:
    return await status_when(
        platform,
        source,
        external_ref,
        lambda status: status.stage == stage,
        f"reached {stage!r}",
        seconds,
    )


async def run_id_of(platform: Platform, source: TopupSource, external_ref: str) -> str:
    """The id of the latest run of the top-up's workflow id."""
    return (await handle_of(platform, source, external_ref).describe()).run_id


async def delivered_twice(platform: Platform, about: str, seconds: float = 20) -> None:
    """Until the bank simulator's webhook about `about` (a transfer id) was
    delivered in both its copies: the gateway answers 2xx only once the
    workflow has the event, so nothing of the duplicate is still on its way."""

    async def webhooks() -> list[dict[str, Any]]:
        return [w for w in platform.sim.admin("GET", "/webhooks") if w["about"] == about]

    await polling.until(
        webhooks,
        lambda found: (
            bool(found) and all(w["delivered_at"] and w["deliveries"] == 2 for w in found)
        ),
        f"the webhooks about {about} delivered twice",
        seconds,
    )


async def webhooks_drained(platform: Platform, seconds: float = 20) -> None:
    """Until the simulators have delivered every webhook they emitted (each
    answered 2xx by the gateway, so each reached its workflow)."""

    async def pending() -> int:
        count: int = platform.sim.admin("GET", "/health")["webhooks_pending"]
        return count

    await polling.until(pending, lambda count: count == 0, "every webhook delivered", seconds)


async def refused(platform: Platform, source: TopupSource, ref: str, review: Any) -> str:
    """The refusal of a review update as "code: detail"; a review the SDK
    could not decode as "RuntimeError: ...: ValidationError: <the fields>"."""
    try:
        await handle_of(platform, source, ref).execute_update(REVIEW_UPDATE, review)
    except WorkflowUpdateFailedError as error:
        refusal = error.cause
        assert isinstance(refusal, ApplicationError), refusal
        told = f"{refusal.type}: {refusal.message}"
        if isinstance(refusal.cause, ApplicationError):
            told += f": {refusal.cause.type}: {refusal.cause.message}"
        return told
    raise AssertionError("the review was accepted")


def approve(**extra: Any) -> TopupReview:
    return TopupReview(decision="approve", reason="checked the payer", operator=OPERATOR, **extra)


async def bank_transfer(
    platform: Platform, reference: str, amount_minor: int, currency: Currency = Currency.USD
) -> InboundTransfer:
    """A transfer arrives at the bank; its webhook starts the top-up."""
    return await starter.simulate_bank_transfer(
        platform.settings, reference, amount_minor, currency
    )


async def started_with(
    platform: Platform, policy: TopupPolicy, reference: str, amount_minor: int
) -> InboundTransfer:
    """A transfer whose top-up a starter begins with `policy`; the bank's own
    webhook is held until then and arrives after, as a redelivery would."""
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    transfer = await bank_transfer(platform, reference, amount_minor)
    await starter.start_bank_topup(
        platform.stack.client, platform.stack.queues, transfer, policy=policy
    )
    platform.sim.admin("POST", "/webhooks/release", {})
    return transfer


def chain(platform: Platform) -> None:
    platform.sim.admin(
        "PUT",
        "/options/tron",
        {"finality_confirmations": FINALITY, "confirmation_milestones": [1, 2, FINALITY]},
    )


async def assert_ledger_clean(platform: Platform) -> None:
    assert await verify(platform.stack.pool) == []


# ----- bank transfers -------------------------------------------------------


async def test_a_bank_transfer_credits_the_wallet_and_charges_the_fee(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    transfer = await bank_transfer(platform, f"  {customer_id} ", 10_000)
    result = await result_of(platform, "bank", transfer.id)
    # The default bank fee: 0.25 fixed plus 20 bps of 100.00, rounded down.
    assert (result.outcome, result.customer_id) == ("credited", customer_id)
    assert (result.credited_minor, result.fee_minor) == (10_000, 45)
    assert await wallet(platform, customer_id) == 9_955
    assert await posted(platform, accounts.bank_inbound("USD")) == -10_000
    assert await posted(platform, accounts.revenue_fees("USD")) == 45
    status = await handle_of(platform, "bank", transfer.id).query("status", result_type=TopupStatus)
    assert status.stage == "credited" and status.amount_minor == 10_000
    usage = await platform.stack.pool.fetchrow(
        "SELECT status, amount_minor FROM topup_usage WHERE topup_id = $1", result.workflow_id
    )
    assert usage is not None and dict(usage) == {"status": "credited", "amount_minor": 10_000}
    await assert_ledger_clean(platform)


async def test_duplicate_webhooks_and_a_second_start_credit_once(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.admin("POST", "/webhooks", {"duplicate": True})
    transfer = await bank_transfer(platform, customer_id, 5_000)
    first = await result_of(platform, "bank", transfer.id)
    first_run = await run_id_of(platform, "bank", transfer.id)
    again = await starter.start_bank_topup(platform.stack.client, platform.stack.queues, transfer)
    assert (await again.result()).model_dump() == first.model_dump()
    await delivered_twice(platform, transfer.id)
    # Neither the second copy nor the second start ran the top-up again.
    assert await run_id_of(platform, "bank", transfer.id) == first_run
    assert await wallet(platform, customer_id) == 5_000 - 35
    assert await posted(platform, accounts.bank_inbound("USD")) == -5_000
    await assert_ledger_clean(platform)


async def test_below_the_minimum_waits_for_review_and_an_approval_credits(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    transfer = await bank_transfer(platform, customer_id, 50)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review is not None and status.pending_review.kind == "limit"
    assert "below the minimum of 1.00 USD" in status.pending_review.reason
    malformed = await refused(
        platform, "bank", transfer.id, {"decision": "approve", "operator": OPERATOR}
    )
    assert malformed.startswith("RuntimeError: Failed decoding arguments: ValidationError: ")
    assert "reason" in malformed, malformed
    assert (
        await refused(platform, "bank", transfer.id, approve(customer_id=customer_id).model_dump())
        == "invalid_request: customer_id: only an unmatched payment is assigned to a customer"
    )
    # Through the HTTP API, as an operator's tool would.
    url = f"{platform.gateway_url}/v1/topups/bank/{transfer.id}"
    async with httpx.AsyncClient(timeout=30, headers=platform.api_headers) as http:
        seen = (await http.get(url)).json()
        assert seen["stage"] == STAGE_REVIEW and seen["pending_review"]["kind"] == "limit"
        bad = await http.post(f"{url}/review", json={"decision": "approve", "operator": "x"})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")
        assert [error["loc"] for error in bad.json()["detail"]] == [["body", "reason"]]
        decided = await http.post(f"{url}/review", json=approve().model_dump(exclude_none=True))
        assert decided.json() == {"result": "approve recorded"}
        result = await result_of(platform, "bank", transfer.id)
        assert (result.outcome, result.reviewed_by, result.fee_minor) == ("credited", OPERATOR, 25)
        # The top-up has ended: a second review finds no process to take it.
        again = await http.post(f"{url}/review", json=approve().model_dump(exclude_none=True))
        assert (again.status_code, again.json()["code"]) == (404, "not_found")
        assert again.json()["detail"] == f"no running process for bank/{transfer.id}"
        missing = await http.get(f"{platform.gateway_url}/v1/topups/bank/ibt_none")
        assert missing.status_code == 404
    assert await wallet(platform, customer_id) == 25


async def test_over_the_maximum_rejected_in_review_credits_nothing(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    transfer = await bank_transfer(platform, customer_id, 2_000_000)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review and "above the maximum" in status.pending_review.reason
    await starter.review(
        platform.stack.client,
        "bank",
        transfer.id,
        TopupReview(decision="reject", reason="source of funds unclear", operator=OPERATOR),
    )
    result = await result_of(platform, "bank", transfer.id)
    assert result.outcome == "rejected" and "source of funds unclear" in result.reason
    assert await wallet(platform, customer_id) == 0
    assert await posted(platform, accounts.bank_inbound("USD")) == 0


async def test_over_the_daily_limit_with_no_review_in_time_credits_nothing(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    policy = TopupPolicy(
        limits={Currency.USD: TopupLimits(min_minor=100, max_minor=20_000, daily_max_minor=15_000)},
        review_wait_seconds=2,
    )
    first = await started_with(platform, policy, customer_id, 10_000)
    assert (await result_of(platform, "bank", first.id)).outcome == "credited"
    second = await started_with(platform, policy, customer_id, 10_000)
    # The review's 2 s are too brief to catch by polling: its reason, the
    # limit it was for, is in the outcome.
    result = await result_of(platform, "bank", second.id)
    assert (result.outcome, result.reason) == (
        "expired",
        "no review within 2s (100.00 USD would take today's top-ups to 200.00 USD,"
        " over the daily limit of 150.00 USD)",
    )
    assert (result.credited_minor, result.reviewed_by) == (0, None)
    assert await wallet(platform, customer_id) == 10_000 - 45
    used = await platform.stack.pool.fetchval(
        "SELECT sum(amount_minor) FROM topup_usage WHERE customer_id = $1", customer_id
    )
    assert used == 10_000


async def test_an_unmatched_transfer_waits_for_an_operator_to_assign_it(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    pending_customer = await customer(platform, EMPTY_WALLETS, approved=False)
    transfer = await bank_transfer(platform, "INVOICE 2291", 7_000, Currency.EUR)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review is not None and status.pending_review.kind == "unmatched"
    assert "not a customer id" in status.pending_review.reason
    assert await refused(platform, "bank", transfer.id, approve().model_dump()) == (
        "invalid_request: customer_id: approving an unmatched payment assigns it; name the customer"
    )
    not_approved = await refused(
        platform, "bank", transfer.id, approve(customer_id=pending_customer).model_dump()
    )
    assert not_approved.startswith("not_found: customer_id: "), not_approved
    assert "is not approved" in not_approved, not_approved
    assert f"approve to {customer_id} recorded" == await starter.review(
        platform.stack.client, "bank", transfer.id, approve(customer_id=customer_id)
    )
    result = await result_of(platform, "bank", transfer.id)
    assert (result.outcome, result.customer_id) == ("credited", customer_id)
    assert await wallet(platform, customer_id, "EUR") == 7_000 - 25 - 14
    assert await posted(platform, accounts.bank_inbound("EUR")) == -7_000


async def test_concurrent_top_ups_cannot_both_slip_under_the_daily_limit(
    ledger_pool: asyncpg.Pool,
) -> None:
    usage = TopupActivities(ledger_pool)

    def reservation(index: int, *, force: bool = False) -> UsageReservation:
        return UsageReservation(
            topup_id=f"topup/bank/t-{index}",
            customer_id="c-busy",
            currency=Currency.USD,
            amount_minor=1_000,
            day=date(2026, 11, 1),
            daily_max_minor=5_000,
            force=force,
        )

    decisions = await asyncio.gather(*(usage.reserve_usage(reservation(i)) for i in range(20)))
    assert sum(decision.reserved for decision in decisions) == 5
    first = next(i for i, decision in enumerate(decisions) if decision.reserved)
    again = await usage.reserve_usage(reservation(first))
    assert again.reserved and again.used_minor == 4_000
    refused_one = next(i for i, decision in enumerate(decisions) if not decision.reserved)
    assert (await usage.reserve_usage(reservation(refused_one, force=True))).reserved
    await usage.set_usage_status(
        UsageStatusChange(topup_id=f"topup/bank/t-{first}", status="released")
    )
    used = await ledger_pool.fetchval(
        "SELECT sum(amount_minor) FROM topup_usage WHERE status <> 'released'"
    )
    assert used == 5_000


# ----- a step after the credit fails for good ------------------------------

# The stage of workflows/topup.py's _after_credit: credited, the receipt not sent.
STAGE_RECEIPT = "sending the receipt"
# Retry-After of a rate-limited receipt: the time a test has to act in that stage.
RECEIPT_RETRY_AFTER_SECONDS = 8


async def test_a_receipt_that_cannot_be_sent_reverses_the_credit(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.fault(kind="error", path_prefix="/notify/v1/messages", status=503)
    transfer = await started_with(platform, TopupPolicy(receipt_attempts_max=2), customer_id, 8_000)
    result = await result_of(platform, "bank", transfer.id)
    assert result.outcome == "reversed" and "could not be sent in 2 attempts" in result.reason
    assert "credit of 80.00 USD and fee of 0.41 USD reversed" == result.compensation
    for code in (
        accounts.wallet(customer_id, "USD"),
        accounts.bank_inbound("USD"),
        accounts.revenue_fees("USD"),
    ):
        assert await posted(platform, code) == 0, code
    usage = await platform.stack.pool.fetchval(
        "SELECT status FROM topup_usage WHERE topup_id = $1", result.workflow_id
    )
    assert usage == "released"
    await assert_ledger_clean(platform)


async def test_a_cancellation_while_the_credit_posts_reverses_it_once_it_posted(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    async with balances_locked(
        platform.stack.database_url, accounts.wallet(customer_id, "USD")
    ) as lock:
        transfer = await bank_transfer(platform, customer_id, 10_000)
        # The credit waits for the wallet; the top-up is cancelled there.
        await until_waiting(platform.stack.pool, lock)
        handle = handle_of(platform, "bank", transfer.id)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    # The wallet free again, the interrupted credit posts after all.
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    for code in (
        accounts.wallet(customer_id, "USD"),
        accounts.bank_inbound("USD"),
        accounts.revenue_fees("USD"),
    ):
        assert await posted(platform, code) == 0, code
    status = await handle.query("status", result_type=TopupStatus)
    assert status.stage == "cancelled"
    usage = await platform.stack.pool.fetchval(
        "SELECT status FROM topup_usage WHERE topup_id = $1", handle.id
    )
    assert usage == "released"
    await assert_ledger_clean(platform)


async def test_a_reversal_the_wallet_cannot_cover_is_left_to_an_operator(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    # The first receipt attempt is told to come back in RECEIPT_RETRY_AFTER_SECONDS
    # (the retry waits that long), the second fails for good: a wide window
    # between the credit and its reversal.
    platform.sim.fault(
        kind="rate_limit",
        path_prefix="/notify/v1/messages",
        seconds=RECEIPT_RETRY_AFTER_SECONDS,
        times=1,
    )
    platform.sim.fault(kind="error", path_prefix="/notify/v1/messages", status=503)
    transfer = await started_with(platform, TopupPolicy(receipt_attempts_max=2), customer_id, 8_000)
    await reach(platform, "bank", transfer.id, STAGE_RECEIPT)
    # The customer spends the money before the top-up gives up on the receipt.
    spent = await Ledger(platform.stack.pool).transfer(
        TransferRequest(
            key=f"spend-{customer_id}",
            debit=accounts.wallet(customer_id, "USD"),
            credit=accounts.bank_inbound("USD"),
            amount_minor=7_000,
            currency=Currency.USD,
        )
    )
    assert spent.accepted, spent
    result = await result_of(platform, "bank", transfer.id)
    assert result.outcome == "reversal_failed"
    assert "NOT reversed" in result.compensation and "operator" in result.compensation
    assert await wallet(platform, customer_id) == 8_000 - 41 - 7_000
    status = await handle_of(platform, "bank", transfer.id).query("status", result_type=TopupStatus)
    assert status.stage == "reversal failed" and status.compensation == result.compensation
    await assert_ledger_clean(platform)


# ----- USDT-TRC20 deposits --------------------------------------------------

# 10 USDT at the simulator's USDT/USD mid of 1 less 25 bps: 997.5 cents,
# 997 paid, 2 spread, 1 rounding; the 1% fee on 9.97 USD is 9 cents.
DEPOSIT_MINOR = 10_000_000


async def assert_deposit_credited(platform: Platform, customer_id: str, tx_hash: str) -> None:
    result = await result_of(platform, "usdt", tx_hash)
    assert (result.outcome, result.customer_id) == ("credited", customer_id)
    assert (result.credited_minor, result.fee_minor) == (997, 9)
    assert await wallet(platform, customer_id) == 988
    assert await posted(platform, accounts.crypto_custody()) == -DEPOSIT_MINOR
    assert await posted(platform, accounts.fx_pool("USDT")) == DEPOSIT_MINOR
    assert await posted(platform, accounts.fx_pool("USD")) == -1_000
    assert await posted(platform, accounts.revenue_fx("USD")) == 2
    assert await posted(platform, accounts.fx_rounding("USD")) == 1
    assert await posted(platform, accounts.revenue_fees("USD")) == 9
    await assert_ledger_clean(platform)


async def test_a_deposit_is_credited_only_after_finality_through_the_fx_legs(
    platform: Platform,
) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await reach(platform, "usdt", deposit.tx_hash, STAGE_CONFIRMATIONS)
    assert await refused(platform, "usdt", deposit.tx_hash, approve().model_dump()) == (
        "wrong_state: no review is pending (stage: waiting for confirmations)"
    )
    await starter.mine_blocks(platform.settings, 1)
    status = await status_when(
        platform,
        "usdt",
        deposit.tx_hash,
        lambda status: status.confirmations == 1,
        "saw the deposit's first confirmation",
    )
    assert status.stage == STAGE_CONFIRMATIONS and status.confirmations_required == 19
    assert await wallet(platform, customer_id) == 0
    await starter.mine_blocks(platform.settings, FINALITY - 1)
    await assert_deposit_credited(platform, customer_id, deposit.tx_hash)


async def test_a_reorg_before_finality_credits_nothing(platform: Platform) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await starter.mine_blocks(platform.settings, 1)
    await starter.reorg(platform.settings, deposit.tx_hash)
    result = await result_of(platform, "usdt", deposit.tx_hash)
    assert result.outcome == "dropped" and result.credited_minor == 0
    dropped_run = await run_id_of(platform, "usdt", deposit.tx_hash)
    await starter.mine_blocks(platform.settings, FINALITY)
    # Whatever the blocks made the chain say has reached the gateway.
    await webhooks_drained(platform)
    # The latest run of the id is still the one that dropped the deposit.
    assert await run_id_of(platform, "usdt", deposit.tx_hash) == dropped_run
    assert await wallet(platform, customer_id) == 0
    assert await posted(platform, accounts.crypto_custody()) == 0


async def test_deposit_webhooks_released_in_reverse_still_credit_once(
    platform: Platform,
) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await starter.mine_blocks(platform.settings, FINALITY)
    # finalized, confirmations 3, 2, 1, detected: the final word comes first.
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    await assert_deposit_credited(platform, customer_id, deposit.tx_hash)
    # A late snapshot of the deposit starts nothing new.
    late = Deposit.model_validate(deposit.model_dump())
    handle = await starter.start_usdt_topup(platform.stack.client, platform.stack.queues, late)
    assert (await handle.result()).outcome == "credited"
    assert await wallet(platform, customer_id) == 988


async def test_fx_quote_failures_that_recover_credit_once(platform: Platform) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.fault(kind="error", path_prefix="/fx/v1/quotes", status=503, times=1)
    platform.sim.fault(kind="rate_limit", path_prefix="/fx/v1/quotes", seconds=1, times=1)
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await starter.mine_blocks(platform.settings, FINALITY)
    await assert_deposit_credited(platform, customer_id, deposit.tx_hash)
    assert (await result_of(platform, "usdt", deposit.tx_hash)).quotes_taken == 1
    assert platform.sim.admin("GET", "/faults") == []


# The wait before a new quote: the time the test has to change the rate source.
REQUOTE_DELAY_SECONDS = 3


async def until_requote_waits(
    handle: WorkflowHandle[Any, TopupResult], seconds: float = 20
) -> None:
    """Until the history shows an FX quote taken and then the timer of the
    wait before the next quote."""

    async def waits() -> bool:
        quotes: set[int] = set()
        quoted = False
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                if event.activity_task_scheduled_event_attributes.activity_type.name == FX_QUOTE:
                    quotes.add(event.event_id)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed = event.activity_task_completed_event_attributes
                quoted = quoted or completed.scheduled_event_id in quotes
            elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED and quoted:
                return True
        return False

    await polling.eventually(waits, f"{handle.id} waited to quote again", seconds)


async def test_a_quote_too_close_to_expiry_is_replaced(platform: Platform) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.admin("PUT", "/options/fx", {"quote_ttl_seconds": 1})
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    await starter.mine_blocks(platform.settings, FINALITY)
    final = deposit.model_copy(update={"status": "finalized", "confirmations": FINALITY})
    handle = await starter.start_usdt_topup(
        platform.stack.client,
        platform.stack.queues,
        final,
        policy=TopupPolicy(
            quote_remaining_seconds_min=2, requote_delay_seconds=REQUOTE_DELAY_SECONDS
        ),
    )
    # The 1 s quote was taken and found too short; during the wait before the
    # next one, the rate source starts quoting for 30 s.
    await until_requote_waits(handle)
    platform.sim.admin("PUT", "/options/fx", {"quote_ttl_seconds": 30})
    platform.sim.admin("POST", "/webhooks/release", {})
    result = await result_of(platform, "usdt", deposit.tx_hash)
    assert result.outcome == "credited" and result.quotes_taken == 2
    await assert_deposit_credited(platform, customer_id, deposit.tx_hash)


async def test_a_quote_that_never_lives_long_enough_credits_nothing(platform: Platform) -> None:
    chain(platform)
    customer_id = await customer(platform, EMPTY_WALLETS)
    platform.sim.admin("PUT", "/options/fx", {"quote_ttl_seconds": 1})
    platform.sim.admin("POST", "/webhooks", {"hold": True})
    deposit = await starter.simulate_deposit(platform.settings, customer_id, DEPOSIT_MINOR)
    final = deposit.model_copy(update={"status": "finalized", "confirmations": FINALITY})
    handle = await starter.start_usdt_topup(
        platform.stack.client,
        platform.stack.queues,
        final,
        policy=TopupPolicy(
            quote_remaining_seconds_min=2, quote_attempts_max=2, requote_delay_seconds=0
        ),
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "no FX quote lived 2s in 2 attempts" in str(failure.value.cause)
    assert await wallet(platform, customer_id) == 0
    assert await posted(platform, accounts.crypto_custody()) == 0


async def test_a_basic_tier_customer_over_the_months_load_or_the_cap_waits_for_review(
    platform: Platform,
) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await platform.stack.pool.execute(
        "UPDATE customers SET kyc_tier = 'basic' WHERE customer_id = $1", customer_id
    )
    # 600.00 fits the basic tier's month (1,000.00) and cap (1,000.00).
    first = await bank_transfer(platform, customer_id, 60_000)
    assert (await result_of(platform, "bank", first.id)).outcome == "credited"
    # 500.00 more would take the month to 1,100.00.
    second = await bank_transfer(platform, customer_id, 50_000)
    status = await reach(platform, "bank", second.id, STAGE_REVIEW)
    assert status.pending_review is not None and status.pending_review.kind == "limit"
    assert status.pending_review.reason == (
        "500.00 USD would take this month's top-ups to 1100.00 USD, over the basic"
        " tier's 1000.00 USD"
    )
    # Enhanced, the same customer's next top-up goes through; its cap is far off.
    await platform.stack.pool.execute(
        "UPDATE customers SET kyc_tier = 'enhanced' WHERE customer_id = $1", customer_id
    )
    third = await bank_transfer(platform, customer_id, 50_000)
    assert (await result_of(platform, "bank", third.id)).outcome == "credited"


async def test_a_wallet_at_its_tiers_cap_takes_no_more_without_review(platform: Platform) -> None:
    customer_id = await customer(platform, EMPTY_WALLETS)
    await platform.stack.pool.execute(
        "UPDATE customers SET kyc_tier = 'basic' WHERE customer_id = $1", customer_id
    )
    # Money already there (moved in outside a top-up): 990.00 of the 1,000.00 cap.
    await fund(platform, customer_id, Currency.USD, 99_000)
    transfer = await bank_transfer(platform, customer_id, 2_000)
    status = await reach(platform, "bank", transfer.id, STAGE_REVIEW)
    assert status.pending_review is not None
    assert status.pending_review.reason == (
        "20.00 USD would take the wallet to 1010.00 USD, over the basic tier's cap of 1000.00 USD"
    )
