"""The top-up's scenarios: a bank transfer credited, one repaying a debt,
one an operator assigns, and a USDT deposit followed to finality."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio.client import Client

from activities.database import create_pool
from activities.ledger import Ledger
from schemas.accounts import system_account
from schemas.ledger import TransferRequest
from schemas.money import Currency
from starters.scenario_steps import STAGE_WAIT_SECONDS_MAX
from starters.scenarios_onboarding import onboarding_approved
from workers.settings import Settings


async def topup_reaching(client: Client, workflow_id: str, done: Callable[[Any], bool]) -> None:
    """Wait until the top-up (started by a webhook) reports a status `done` accepts."""
    from temporalio.service import RPCError

    from workflows.topup import Topup

    handle = client.get_workflow_handle(workflow_id)
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        try:
            if done(await handle.query(Topup.status)):
                return
        except RPCError:
            pass  # its webhook has not started it yet
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{workflow_id} never reached the expected status")


async def topup_bank(client: Client, settings: Settings) -> str:
    """A bank transfer of 100.00 USD referencing an approved customer: its
    webhook starts the top-up, which credits the wallet less the fee."""
    from starters.topup import simulate_bank_transfer
    from workflows.topup import topup_workflow_id

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    transfer = await simulate_bank_transfer(settings, customer_id, 10_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.outcome is not None)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


async def topup_collects_debt(client: Client, settings: Settings) -> str:
    """An approved customer owes 30.00 USD (a lost dispute's shortfall, recorded
    straight on the ledger); a 100.00 USD bank transfer repays it from the credit."""
    from schemas.disputes import customer_debt, customer_debt_spec

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        await ledger.open_account(system_account("disputes:provisional:USD"))
        await ledger.open_account(customer_debt_spec(customer_id, Currency.USD))
        await ledger.transfer(
            TransferRequest(
                key=f"scenario-debt/{customer_id}",
                debit=customer_debt(customer_id, Currency.USD),
                credit="disputes:provisional:USD",
                amount_minor=3_000,
                currency=Currency.USD,
            )
        )
    finally:
        await pool.close()
    from starters.topup import simulate_bank_transfer
    from workflows.topup import topup_workflow_id

    transfer = await simulate_bank_transfer(settings, customer_id, 10_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.outcome is not None)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


async def topup_unmatched(client: Client, settings: Settings) -> str:
    """A bank transfer whose reference names no customer waits in review; an
    operator assigns it to an approved customer, and it is credited."""
    from schemas.topup import TopupReview
    from starters.topup import review, simulate_bank_transfer
    from workflows.topup import topup_workflow_id
    from workflows.topup_steps import STAGE_REVIEW

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    transfer = await simulate_bank_transfer(settings, "INVOICE 2291", 5_000, Currency.USD)
    workflow_id = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, workflow_id, lambda status: status.stage == STAGE_REVIEW)
    decision = TopupReview(
        decision="approve",
        reason="payer confirmed by phone",
        operator="op-demo",
        customer_id=customer_id,
    )
    await review(client, "bank", transfer.id, decision)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id


def _has_confirmations(count: int, status: Any) -> bool:
    return bool(status.confirmations == count)


async def topup_usdt(client: Client, settings: Settings) -> str:
    """25 USDT land at an approved customer's address; the top-up follows the
    confirmations (1, 6, then finality at 19) and credits the USD wallet
    through the FX pools at a firm quote."""
    from functools import partial

    from starters.topup import mine_blocks, simulate_deposit
    from workflows.topup import topup_workflow_id
    from workflows.topup_steps import STAGE_CONFIRMATIONS

    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    deposit = await simulate_deposit(settings, customer_id, 25_000_000)
    workflow_id = topup_workflow_id("usdt", deposit.tx_hash)
    await topup_reaching(client, workflow_id, lambda status: status.stage == STAGE_CONFIRMATIONS)
    for blocks, seen in ((1, 1), (5, 6)):
        await mine_blocks(settings, blocks)
        await topup_reaching(client, workflow_id, partial(_has_confirmations, seen))
    await mine_blocks(settings, 13)
    await client.get_workflow_handle(workflow_id).result()
    return workflow_id
