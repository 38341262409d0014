"""The demo's money out: the customer withdraws part of the balance to a bank
account new to them (a short wait first, a day in production), the bank sends
it; then a second customer, onboarded and topped up, closes their account:
the balance paid out and the wallets closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from temporalio.client import Client

from activities.providers.bank import BankClient
from schemas.closures import ClosureInput, ClosurePolicy
from schemas.kyc import KycDecision
from schemas.money import Currency, Money
from schemas.onboarding import OnboardingInput
from schemas.providers import BANK
from schemas.topup import TopupResult
from schemas.withdrawals import (
    BankDestination,
    WithdrawalInput,
    WithdrawalPolicy,
    WithdrawalStatus,
)
from starters.closure import start as start_closure
from starters.onboarding import start_onboarding
from starters.scenario_steps import (
    PASSPORT,
    STAGE_WAIT_SECONDS_MAX,
    decide_kyc,
    new_customer,
    reach,
)
from starters.scenarios_topup import topup_reaching
from starters.topup import simulate_bank_transfer
from starters.withdrawal import start as start_withdrawal
from workers.settings import Settings
from workflows.topup import topup_workflow_id
from workflows.withdrawal import (
    STAGE_COOLING,
    Withdrawal,
)

Say = Callable[[str, str | None], None]
DEMO_IBAN = BankDestination(iban="DE89370400440532013000", name="Ada Lovelace")
# A new account waits this long before the money leaves (a day by default).
DEMO_COOLING_SECONDS = 3
DEMO_WITHDRAWAL_MINOR = 10_000


async def _bank_sends(settings: Settings, reference: str) -> str:
    """The bank sends the payout made under `reference` once it has it; its id."""
    async with BankClient(f"{settings.providers_base_url}/{BANK}") as bank:
        for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
            found = await bank.payouts_by_reference(reference)
            if found:
                await bank.simulate_payout_sent(
                    found[0].id, idempotency_key=f"demo-send-{found[0].id}"
                )
                return found[0].id
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the bank never had a payout for {reference}")


async def demo_money_out(client: Client, settings: Settings, say: Say, customer_id: str) -> None:
    await _withdraw(client, settings, say, customer_id)
    await _close_an_account(client, settings, say)


async def _withdraw(client: Client, settings: Settings, say: Say, customer_id: str) -> None:
    queues = settings.task_queues
    request_id = f"demo-withdrawal-{uuid.uuid4().hex[:6]}"
    handle = await start_withdrawal(
        client,
        queues,
        WithdrawalInput(
            request_id=request_id,
            customer_id=customer_id,
            amount_minor=DEMO_WITHDRAWAL_MINOR,
            currency=Currency.USD,
            destination=DEMO_IBAN,
            requested_at=datetime.now(UTC),
            policy=WithdrawalPolicy(
                new_destination_cooling_seconds=DEMO_COOLING_SECONDS, return_watch_seconds=0
            ),
        ),
    )
    amount = Money(amount_minor=DEMO_WITHDRAWAL_MINOR, currency=Currency.USD)
    status: WithdrawalStatus | None = None
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        status = await handle.query(Withdrawal.status)
        if status.stage == STAGE_COOLING or status.payout_id is not None:
            break
        await asyncio.sleep(0.05)
    say(
        f"Withdrawal of {amount} to {DEMO_IBAN.describe()}: a new account, so it waits"
        f" {DEMO_COOLING_SECONDS} s first (a day in production; the customer is told)",
        handle.id,
    )
    payout_id = await _bank_sends(settings, request_id)
    result = await handle.result()
    say(
        f"Withdrawal {result.outcome}: payout {payout_id} sent by the bank; the wallet paid"
        f" {amount} and the fee {Money(amount_minor=result.fee_minor, currency=Currency.USD)}",
        handle.id,
    )


async def _close_an_account(client: Client, settings: Settings, say: Say) -> None:
    queues = settings.task_queues
    profile = new_customer("leaver")
    onboarding = await start_onboarding(
        client, queues, OnboardingInput(profile=profile, documents=[PASSPORT])
    )
    status = await reach(onboarding, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await onboarding.result()
    transfer = await simulate_bank_transfer(settings, profile.customer_id, 8_000, Currency.USD)
    topup = topup_workflow_id("bank", transfer.id)
    await topup_reaching(client, topup, lambda found: found.outcome is not None)
    credited = await client.get_workflow_handle(topup, result_type=TopupResult).result()
    say(
        f"A second customer, {profile.customer_id}, onboarded and topped up"
        f" ({credited.credited_minor - credited.fee_minor} USD cents), asks to close the account",
        onboarding.id,
    )
    handle = await start_closure(
        client,
        queues,
        ClosureInput(
            customer_id=profile.customer_id,
            destination=DEMO_IBAN,
            reason="the customer is leaving",
            requested_at=datetime.now(UTC),
            policy=ClosurePolicy(card_retry_seconds=1, return_watch_seconds=0),
        ),
    )
    await _bank_sends(settings, f"closure-{profile.customer_id}-usd-1")
    closed = await handle.result()
    paid = ", ".join(
        str(Money(amount_minor=amount, currency=currency))
        for currency, amount in closed.paid_out.items()
    )
    say(
        f"Account closure {closed.outcome}: {paid or 'nothing'} paid out to"
        f" {DEMO_IBAN.describe()}, wallets closed at zero, the customer marked closed",
        handle.id,
    )
