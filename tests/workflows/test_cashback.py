"""Cashback on real workers: campaigns loaded as data, rewards paid once,
refunds clawed back (never overdrawing a wallet), the customer told; and the
`cardflow cashback` commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
from typer.testing import CliRunner

from activities.cashback import CashbackStore
from activities.customers import CustomerStore
from activities.database import create_pool
from activities.ledger import Ledger
from activities.ledger.verify import verify
from schemas.accounts import expense_cashback, issuer_settlement, system_account, wallet
from schemas.cashback import (
    CashbackInput,
    CashbackPolicy,
    CashbackRefund,
    CashbackResult,
    CashbackStatus,
)
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.search import PROCESS_STATUS
from starters.cashback import SAMPLE_CAMPAIGNS_FILE, read_campaign_file, refund, start_cashback
from starters.cli import app
from tests import polling
from tests.conftest import Platform, RunningStack, StackFactory
from tests.customers import customer, profile
from tests.interruptions import balances_locked, until_activity_cancel_requested, until_waiting
from workers.build import build_worker
from workflows.cashback import CASHBACK_WORKFLOW, cashback_workflow_id

PURCHASED_AT = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
GROCERIES = "5411"
ELECTRONICS = "5732"
# Long enough that only a refund or the test ends the process.
OPEN = CashbackPolicy(clawback_window_seconds=600)
# Short enough that a test sees the process end on its own.
BRIEF = CashbackPolicy(clawback_window_seconds=1)


async def shopper(stack: RunningStack, *, funds: int = 0, segment: str | None = None) -> str:
    """A customer (tests.customers) with a USD wallet holding `funds`, in
    `segment` (the default one unless named), the sample campaigns loaded."""
    customer_id = await customer(stack, {Currency.USD: funds})
    store = CashbackStore(stack.pool)
    await store.load_campaigns(read_campaign_file(SAMPLE_CAMPAIGNS_FILE).campaigns)
    if segment:
        await store.set_segment(customer_id, segment)
    return customer_id


def purchase(
    customer_id: str,
    *,
    amount_minor: int = 5_000,
    mcc: str = GROCERIES,
    policy: CashbackPolicy = OPEN,
    transaction_id: str | None = None,
) -> CashbackInput:
    return CashbackInput(
        transaction_id=transaction_id or f"txn-{uuid.uuid4().hex[:10]}",
        customer_id=customer_id,
        card_id="card-test",
        amount_minor=amount_minor,
        currency=Currency.USD,
        mcc=mcc,
        merchant_name="Corner Grocer",
        occurred_at=PURCHASED_AT,
        policy=policy,
    )


async def record_purchase(stack: RunningStack, request: CashbackInput) -> None:
    """What the card process does first: the purchase's row in card_transactions."""
    await CashbackStore(stack.pool).add_card_transaction(
        transaction_id=request.transaction_id,
        card_id=request.card_id,
        customer_id=request.customer_id,
        amount_minor=request.amount_minor,
        currency=request.currency,
        occurred_at=request.occurred_at,
        mcc=request.mcc,
        merchant_name=request.merchant_name,
    )


async def start(stack: RunningStack, request: CashbackInput) -> WorkflowHandle[Any, CashbackResult]:
    await record_purchase(stack, request)
    return await start_cashback(stack.client, stack.queues, request)


async def until(
    handle: WorkflowHandle[Any, Any],
    condition: Callable[[CashbackStatus], bool],
    seconds: float = 20,
) -> CashbackStatus:
    async def status() -> CashbackStatus:
        answer: CashbackStatus = await handle.query("status", result_type=CashbackStatus)
        return answer

    return await polling.until(status, condition, f"{handle.id} got there", seconds)


async def balance(stack: RunningStack, code: str) -> int:
    return (await Ledger(stack.pool).balance(code)).posted


async def ledger_is_clean(stack: RunningStack) -> None:
    assert await verify(stack.pool) == []


async def transfers_of(stack: RunningStack, transaction_id: str) -> int:
    return int(
        await stack.pool.fetchval(
            "SELECT count(*) FROM ledger_transfers WHERE idempotency_key LIKE $1",
            cashback_workflow_id(transaction_id) + "/%",
        )
    )


# ----- rewards ---------------------------------------------------------------------


async def test_a_grocery_purchase_pays_two_percent_once_however_often_it_starts(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack, funds=1_000)
    request = purchase(customer_id)
    handle = await start(stack, request)
    status = await until(handle, lambda s: s.stage == "open for refunds")
    assert [(r.campaign_id, r.amount_minor) for r in status.rewards] == [
        ("groceries-dining-2pct", 100)
    ]
    assert await balance(stack, wallet(customer_id, "USD")) == 1_100
    assert await balance(stack, expense_cashback("USD")) == -100

    # One process per purchase: a second start is refused.
    with pytest.raises(WorkflowAlreadyStartedError):
        await start_cashback(stack.client, stack.queues, request)

    # Even a fresh run of the same id (an operator's restart) pays nothing more:
    # the ledger keys are per (transaction, campaign).
    await handle.terminate("test: restart")
    again = await stack.client.start_workflow(
        CASHBACK_WORKFLOW,
        request.model_copy(
            update={
                "policy": BRIEF,
                "ledger_task_queue": stack.queues.ledger,
                "providers_task_queue": stack.queues.providers,
                "workflows_task_queue": stack.queues.workflows,
            }
        ),
        id=handle.id,
        task_queue=stack.queues.workflows,
        result_type=CashbackResult,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    result = await again.result()
    assert result.outcome == "completed" and result.reward_minor == 100
    assert result.reason == "the clawback window closed"
    assert await balance(stack, wallet(customer_id, "USD")) == 1_100
    assert await transfers_of(stack, request.transaction_id) == 1
    await ledger_is_clean(stack)


async def test_a_purchase_no_campaign_matches_pays_nothing_and_completes_at_once(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack, funds=1_000)
    request = purchase(customer_id, mcc=ELECTRONICS, policy=OPEN)
    result = await (await start(stack, request)).result()
    assert result.outcome == "no_reward" and result.reward_minor == 0
    assert {v.campaign_id: v.matched for v in result.verdicts} == {
        "active-1pct": False,
        "groceries-dining-2pct": False,
        "premium-5pct": False,
    }
    assert await balance(stack, wallet(customer_id, "USD")) == 1_000
    assert await transfers_of(stack, request.transaction_id) == 0


async def test_a_purchase_under_the_minimum_earns_nothing(stack: RunningStack) -> None:
    customer_id = await shopper(stack)
    result = await (await start(stack, purchase(customer_id, amount_minor=999))).result()
    assert result.outcome == "no_reward"
    reasons = {v.campaign_id: v.reason for v in result.verdicts}
    assert "under the minimum" in reasons["groceries-dining-2pct"]


async def test_the_premium_segment_earns_five_percent_where_standard_earns_two(
    stack: RunningStack,
) -> None:
    premium = await shopper(stack, segment="premium")
    standard = await shopper(stack)
    paid_premium = await (await start(stack, purchase(premium, policy=BRIEF))).result()
    paid_standard = await (await start(stack, purchase(standard, policy=BRIEF))).result()
    assert [(r.campaign_id, r.amount_minor) for r in paid_premium.rewards] == [
        ("premium-5pct", 250)
    ]
    assert [(r.campaign_id, r.amount_minor) for r in paid_standard.rewards] == [
        ("groceries-dining-2pct", 100)
    ]
    assert await balance(stack, wallet(premium, "USD")) == 250
    assert await balance(stack, wallet(standard, "USD")) == 100


async def test_another_purchase_in_the_last_seven_days_adds_the_activity_reward(
    stack: RunningStack,
) -> None:
    active = await shopper(stack)
    dormant = await shopper(stack)
    store = CashbackStore(stack.pool)
    for customer_id, days_ago in ((active, 3), (dormant, 8)):
        await store.add_card_transaction(
            transaction_id=f"earlier-{uuid.uuid4().hex[:8]}",
            card_id="card-test",
            customer_id=customer_id,
            amount_minor=700,
            currency=Currency.USD,
            occurred_at=PURCHASED_AT - timedelta(days=days_ago),
            mcc="5999",
        )
    # The purchase's own row (written before the start) never counts as "another".
    rewarded = await (await start(stack, purchase(active, policy=BRIEF))).result()
    plain = await (await start(stack, purchase(dormant, policy=BRIEF))).result()
    assert [(r.campaign_id, r.amount_minor) for r in rewarded.rewards] == [
        ("groceries-dining-2pct", 100),
        ("active-1pct", 50),
    ]
    assert [r.campaign_id for r in plain.rewards] == ["groceries-dining-2pct"]
    assert "0 other purchase(s)" in {v.campaign_id: v.reason for v in plain.verdicts}["active-1pct"]
    assert await balance(stack, wallet(active, "USD")) == 150
    await ledger_is_clean(stack)


# ----- refunds ---------------------------------------------------------------------


async def test_refunds_claw_back_in_proportion_then_the_rest_and_a_repeat_is_ignored(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack, funds=1_000)
    request = purchase(customer_id)
    handle = await start(stack, request)
    await until(handle, lambda s: s.stage == "open for refunds")
    txn = request.transaction_id

    await refund(stack.client, txn, CashbackRefund(refund_id="r-1", amount_minor=2_500))
    status = await until(handle, lambda s: len(s.refunds) == 1)
    assert status.clawed_back_minor == 50 and status.shortfall_minor == 0
    assert await balance(stack, wallet(customer_id, "USD")) == 1_050

    await refund(stack.client, txn, CashbackRefund(refund_id="r-1", amount_minor=2_500))
    await refund(stack.client, txn, CashbackRefund(refund_id="r-2", amount_minor=2_500))
    result = await handle.result()
    assert result.outcome == "completed" and result.reason == "the purchase was refunded in full"
    assert [(r.refund_id, r.clawed_back_minor) for r in result.refunds] == [
        ("r-1", 50),
        ("r-2", 50),
    ]
    assert result.refunded_minor == 5_000 and result.clawed_back_minor == 100
    assert await balance(stack, wallet(customer_id, "USD")) == 1_000
    assert await balance(stack, expense_cashback("USD")) == 0
    await ledger_is_clean(stack)


async def test_a_clawback_the_wallet_cannot_cover_records_a_shortfall_and_never_overdraws(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack)
    request = purchase(customer_id)
    handle = await start(stack, request)
    await until(handle, lambda s: s.stage == "open for refunds")
    customer_wallet = wallet(customer_id, "USD")
    assert await balance(stack, customer_wallet) == 100
    # The customer spends most of the reward before the merchant refunds.
    ledger = Ledger(stack.pool)
    await ledger.open_account(system_account(issuer_settlement("USD")))
    spent = await ledger.transfer(
        TransferRequest(
            key=f"spend-{customer_id}",
            debit=customer_wallet,
            credit=issuer_settlement("USD"),
            amount_minor=80,
            currency=Currency.USD,
        )
    )
    assert spent.accepted

    await refund(
        stack.client, request.transaction_id, CashbackRefund(refund_id="r-all", amount_minor=5_000)
    )
    result = await handle.result()
    assert result.clawed_back_minor == 20 and result.shortfall_minor == 80
    assert (
        result.refunds[0].shortfall_minor == 80 and "covered 20 of 100" in result.refunds[0].detail
    )
    assert await balance(stack, customer_wallet) == 0
    description = await handle.describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "shortfall"
    await ledger_is_clean(stack)


async def test_a_clawback_on_an_empty_wallet_takes_nothing_and_records_it_all(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack)
    request = purchase(customer_id)
    handle = await start(stack, request)
    await until(handle, lambda s: s.stage == "open for refunds")
    ledger = Ledger(stack.pool)
    await ledger.open_account(system_account(issuer_settlement("USD")))
    await ledger.transfer(
        TransferRequest(
            key=f"spend-{customer_id}",
            debit=wallet(customer_id, "USD"),
            credit=issuer_settlement("USD"),
            amount_minor=100,
            currency=Currency.USD,
        )
    )
    await refund(
        stack.client, request.transaction_id, CashbackRefund(refund_id="r-half", amount_minor=2_500)
    )
    status = await until(handle, lambda s: len(s.refunds) == 1)
    assert status.clawed_back_minor == 0 and status.shortfall_minor == 50
    assert status.refunds[0].detail == "the wallet is empty"
    await handle.cancel()
    assert await balance(stack, wallet(customer_id, "USD")) == 0
    await ledger_is_clean(stack)


@contextlib.asynccontextmanager
async def workflows_worker(stack: RunningStack) -> AsyncIterator[None]:
    """The stack's workflows worker, for a while: outside it, nothing runs the
    processes' workflow tasks, and what reaches a process waits for the next one."""
    async with build_worker("workflows", stack.client, stack.queues, pool=stack.pool):
        yield


async def test_a_refund_received_before_a_cancellation_is_still_clawed_back(
    make_stack: StackFactory,
) -> None:
    # The refund and the cancellation reach the process in one workflow task
    # (its worker was away while both arrived): the refund's clawback starts,
    # the cancellation interrupts it, and it is settled all the same.
    async with make_stack(kinds=("ledger", "providers")) as stack:
        customer_id = await shopper(stack, funds=1_000)
        request = purchase(customer_id)
        async with workflows_worker(stack):
            handle = await start(stack, request)
            await until(handle, lambda s: s.stage == "open for refunds")
        await refund(
            stack.client,
            request.transaction_id,
            CashbackRefund(refund_id="r-1", amount_minor=5_000),
        )
        await handle.cancel()
        async with workflows_worker(stack):
            with pytest.raises(WorkflowFailureError) as failure:
                await handle.result()
            assert isinstance(failure.value.cause, CancelledError)
            assert await balance(stack, wallet(customer_id, "USD")) == 1_000
            assert await balance(stack, expense_cashback("USD")) == 0
            status = await handle.query("status", result_type=CashbackStatus)
        assert (status.stage, status.refunded_minor, status.clawed_back_minor) == (
            "cancelled",
            5_000,
            100,
        )
        assert await transfers_of(stack, request.transaction_id) == 2
        await ledger_is_clean(stack)


async def test_a_cancellation_during_the_reward_payment_learns_it_posted_and_claws_it_back(
    stack: RunningStack,
) -> None:
    customer_id = await shopper(stack, funds=1_000)
    request = purchase(customer_id)
    customer_wallet = wallet(customer_id, "USD")
    async with balances_locked(stack.database_url, customer_wallet) as lock:
        handle = await start(stack, request)
        # The reward's posting waits for the wallet; the purchase is refunded
        # in full and the process cancelled meanwhile.
        await until_waiting(stack.pool, lock)
        await refund(
            stack.client,
            request.transaction_id,
            CashbackRefund(refund_id="r-1", amount_minor=5_000),
        )
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    # The wallet free again, the interrupted payment posts after all.
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert await balance(stack, customer_wallet) == 1_000
    assert await balance(stack, expense_cashback("USD")) == 0
    status = await handle.query("status", result_type=CashbackStatus)
    assert (
        status.stage,
        status.reward_minor,
        status.refunded_minor,
        status.clawed_back_minor,
        status.shortfall_minor,
    ) == ("cancelled", 100, 5_000, 100, 0)
    assert await transfers_of(stack, request.transaction_id) == 2
    await ledger_is_clean(stack)


# ----- notifications -----------------------------------------------------------------


def messages_to(platform: Platform, email: str) -> list[str]:
    response = httpx.get(
        f"{platform.sim.provider_url('notify')}/v1/messages", params={"to": email}, timeout=10
    )
    return [m["body"] for m in response.json()["data"]]


async def test_the_customer_is_told_of_the_reward(platform: Platform) -> None:
    customer_id = await shopper(platform.stack)
    handle = await start(platform.stack, purchase(customer_id))
    await until(handle, lambda s: s.notified)
    [body] = messages_to(platform, f"{customer_id}@example.com")
    assert "1.00 USD cashback" in body and "Corner Grocer" in body
    await handle.cancel()


async def test_a_failed_notification_never_undoes_the_reward(platform: Platform) -> None:
    platform.sim.fault(path_prefix="/notify/v1/messages", kind="error", status=503, times=1_000)
    customer_id = await shopper(platform.stack)
    result = await (
        await start(
            platform.stack, purchase(customer_id, policy=CashbackPolicy(clawback_window_seconds=3))
        )
    ).result()
    assert result.outcome == "completed" and result.reward_minor == 100
    assert not result.notified
    assert await balance(platform.stack, wallet(customer_id, "USD")) == 100
    await ledger_is_clean(platform.stack)


# ----- the campaigns file and the CLI ---------------------------------------------------


def test_the_campaigns_file_loads_once_lists_and_refuses_a_changed_version(
    database_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": database_url, "CARDFLOW_HOME": str(tmp_path)}
    first = runner.invoke(
        app, ["cashback", "campaigns", "load", str(SAMPLE_CAMPAIGNS_FILE)], env=env
    )
    assert first.exit_code == 0, first.output
    assert "loaded: groceries-dining-2pct v1, premium-5pct v1, active-1pct v1" in first.output
    again = runner.invoke(
        app, ["cashback", "campaigns", "load", str(SAMPLE_CAMPAIGNS_FILE)], env=env
    )
    assert again.exit_code == 0 and "loaded: none" in again.output
    assert "unchanged: groceries-dining-2pct v1" in again.output

    changed = json.loads(SAMPLE_CAMPAIGNS_FILE.read_text())
    changed["campaigns"][0]["reward"]["basis_points"] = 300
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    refused = runner.invoke(app, ["cashback", "campaigns", "load", str(path)], env=env)
    assert refused.exit_code == 1 and "version 2" in refused.stderr

    listed = runner.invoke(app, ["cashback", "campaigns", "list", "--json"], env=env)
    assert listed.exit_code == 0
    assert sorted(entry["campaign"]["id"] for entry in json.loads(listed.stdout)) == [
        "active-1pct",
        "groceries-dining-2pct",
        "premium-5pct",
    ]


def test_a_bad_campaigns_file_is_refused_naming_the_field(
    database_url: str, tmp_path: Path
) -> None:
    bad = json.loads(SAMPLE_CAMPAIGNS_FILE.read_text())
    bad["campaigns"][1]["reward"]["basis_points"] = 20_000
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = CliRunner().invoke(
        app,
        ["cashback", "campaigns", "load", str(path)],
        env={"DATABASE_URL": database_url, "CARDFLOW_HOME": str(tmp_path)},
    )
    assert result.exit_code == 2
    assert "campaigns.1.reward.basis_points" in result.stderr


def test_a_segment_is_set_for_a_known_customer_only(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "CARDFLOW_HOME": str(tmp_path)}
    runner = CliRunner()
    unknown = runner.invoke(app, ["cashback", "segment", "nobody", "premium"], env=env)
    assert unknown.exit_code == 1 and "no customer nobody" in unknown.stderr
    malformed = runner.invoke(app, ["cashback", "segment", "nobody", "Premium!"], env=env)
    assert malformed.exit_code == 2 and "segment" in malformed.stderr

    async def known_customer() -> str:
        pool = await create_pool(database_url, size_max=1)
        try:
            await CustomerStore(pool).save(profile("c-known"))
            return await CashbackStore(pool).segment("c-known")
        finally:
            await pool.close()

    assert asyncio.run(known_customer()) == "standard"
    assert runner.invoke(app, ["cashback", "segment", "c-known", "premium"], env=env).exit_code == 0

    async def segment_now() -> str:
        pool = await create_pool(database_url, size_max=1)
        try:
            return await CashbackStore(pool).segment("c-known")
        finally:
            await pool.close()

    assert asyncio.run(segment_now()) == "premium"
