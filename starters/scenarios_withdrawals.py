"""Money out: a withdrawal paid to a bank account, one sent as USDT-TRC20,
and an account closed with its balance paid out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from temporalio.client import Client

from activities.providers.bank import BankClient
from activities.providers.tron import TronClient
from schemas.bank import Payout
from schemas.closures import ClosureInput, ClosurePolicy
from schemas.money import Currency
from schemas.providers import BANK, TRON
from schemas.topup import TopupResult
from schemas.withdrawals import (
    BankDestination,
    TronDestination,
    WithdrawalInput,
    WithdrawalPolicy,
)
from starters.closure import start as start_closure
from starters.scenario_steps import STAGE_WAIT_SECONDS_MAX
from starters.scenarios_topup import topup_bank
from starters.withdrawal import start as start_withdrawal
from workers.settings import Settings
from workflows.withdrawal import withdrawal_workflow_id

SCENARIO_IBAN = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
# No wait for a new account, no watch for a return: the scenario ends at once.
SCENARIO_POLICY = WithdrawalPolicy(
    new_destination_cooling_seconds=0, outcome_poll_seconds=5, return_watch_seconds=0
)


async def _funded_customer(client: Client, settings: Settings) -> str:
    """An approved customer whose USD wallet a bank transfer credited (99.55 USD)."""
    topup = await topup_bank(client, settings)
    result = await client.get_workflow_handle(topup, result_type=TopupResult).result()
    assert result.customer_id is not None
    return str(result.customer_id)


async def _payout_of(settings: Settings, reference: str) -> Payout:
    async with BankClient(f"{settings.providers_base_url}/{BANK}") as bank:
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            found = await bank.payouts_by_reference(reference)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
    raise TimeoutError(f"no payout with reference {reference}")


async def _sent(settings: Settings, reference: str) -> None:
    """The bank sends the payout of `reference` once it has it."""
    payout = await _payout_of(settings, reference)
    async with BankClient(f"{settings.providers_base_url}/{BANK}") as bank:
        await bank.simulate_payout_sent(payout.id, idempotency_key=f"scenario-send-{payout.id}")


async def _withdraw(
    client: Client,
    settings: Settings,
    customer_id: str,
    amount_minor: int,
    destination: BankDestination | TronDestination,
) -> str:
    request_id = f"scenario-{uuid.uuid4().hex[:10]}"
    await start_withdrawal(
        client,
        settings.task_queues,
        WithdrawalInput(
            request_id=request_id,
            customer_id=customer_id,
            amount_minor=amount_minor,
            currency=Currency.USD,
            destination=destination,
            requested_at=datetime.now(UTC),
            policy=SCENARIO_POLICY,
        ),
    )
    return request_id


async def withdrawal_paid(client: Client, settings: Settings) -> str:
    """50.00 USD to the customer's bank account: held, paid, posted once sent."""
    customer_id = await _funded_customer(client, settings)
    request_id = await _withdraw(client, settings, customer_id, 5_000, SCENARIO_IBAN)
    await _sent(settings, request_id)
    await client.get_workflow_handle(withdrawal_workflow_id(request_id)).result()
    return withdrawal_workflow_id(request_id)


async def withdrawal_usdt(client: Client, settings: Settings) -> str:
    """40.00 USD sent as USDT-TRC20 at a firm quote, posted once the chain is final."""
    customer_id = await _funded_customer(client, settings)
    async with TronClient(f"{settings.providers_base_url}/{TRON}") as tron:
        address = (await tron.customer_address(f"elsewhere-{customer_id}")).address
        request_id = await _withdraw(
            client, settings, customer_id, 4_000, TronDestination(rail="usdt", address=address)
        )
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            if await tron.withdrawals_by_reference(request_id):
                break
            await asyncio.sleep(0.05)
        await tron.mine_blocks(19, idempotency_key=f"scenario-mine-{request_id}")
    await client.get_workflow_handle(withdrawal_workflow_id(request_id)).result()
    return withdrawal_workflow_id(request_id)


async def closure_closed(client: Client, settings: Settings) -> str:
    """A customer with no card leaves: the balance paid out, the wallets closed."""
    customer_id = await _funded_customer(client, settings)
    handle = await start_closure(
        client,
        settings.task_queues,
        ClosureInput(
            customer_id=customer_id,
            destination=SCENARIO_IBAN,
            requested_at=datetime.now(UTC),
            policy=ClosurePolicy(card_retry_seconds=1, return_watch_seconds=0),
        ),
    )
    await _sent(settings, f"closure-{customer_id}-usd-1")
    await handle.result()
    return handle.id
