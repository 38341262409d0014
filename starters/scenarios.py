"""Named end-to-end scenarios against a running stack: the demo runs them, and
`cardflow histories record` records their workflow histories for replay tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from temporalio.client import Client, WorkflowHandle

from activities.database import create_pool
from activities.ledger import Ledger
from activities.providers.kyc import KycClient
from schemas.accounts import system_account
from schemas.cards import CardIssueInput, CardStateChange
from schemas.customers import CustomerProfile
from schemas.issuer import Address
from schemas.kyc import KycDecision, KycDocumentType, KycRejectType
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.onboarding import (
    DocumentSpec,
    KycReview,
    OnboardingInput,
    OnboardingPolicy,
    OnboardingStatus,
    Resubmission,
)
from schemas.providers import KYC
from starters.cards import issue_card
from starters.health import ping
from starters.onboarding import resubmit, review, start_onboarding
from workers.settings import Settings
from workflows.cards import CLOSE_UPDATE, FREEZE_UPDATE, UNFREEZE_UPDATE, card_workflow_id
from workflows.health import ping_workflow_id
from workflows.onboarding import wallet_code

STAGE_WAIT_SECONDS_MAX = 60
SCENARIO_ADDRESS = Address(
    line1="1 Analytical Way", city="London", postal_code="N1 9GU", country="GB"
)
PASSPORT = DocumentSpec(type=KycDocumentType.PASSPORT, country="DEU", file_name="passport.jpg")

# A scenario returns the ids of the workflows it ran (recorded in that order).
Scenario = Callable[[Client, Settings], Awaitable[str | list[str]]]


def new_customer(tag: str) -> CustomerProfile:
    customer_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    return CustomerProfile(
        customer_id=customer_id,
        first_name="Ada",
        last_name="Lovelace",
        date_of_birth=date(1990, 12, 10),
        country="DEU",
        email=f"{customer_id}@example.com",
    )


async def reach(handle: WorkflowHandle[Any, Any], stage: str) -> OnboardingStatus:
    """Wait until the onboarding reports `stage`."""
    status: OnboardingStatus | None = None
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        status = await handle.query("status", result_type=OnboardingStatus)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.id} never reached {stage!r} (last: {status})")


async def _decide(
    settings: Settings,
    applicant_id: str,
    result: KycDecision,
    reject_type: KycRejectType | None = None,
    labels: tuple[str, ...] = (),
) -> None:
    async with KycClient(f"{settings.providers_base_url}/{KYC}") as kyc:
        await kyc.simulate_decision(
            applicant_id,
            result=result,
            reject_type=reject_type,
            labels=labels,
            idempotency_key=f"decide-{uuid.uuid4()}",
        )


async def _onboard(
    client: Client, settings: Settings, tag: str, policy: OnboardingPolicy | None = None
) -> WorkflowHandle[Any, Any]:
    request = OnboardingInput(
        profile=new_customer(tag), documents=[PASSPORT], policy=policy or OnboardingPolicy()
    )
    return await start_onboarding(client, settings.task_queues, request)


async def ping_scenario(client: Client, settings: Settings) -> str:
    workflow_id = ping_workflow_id(f"scenario-{uuid.uuid4().hex[:8]}")
    await ping(client, settings.task_queues, requested_by="scenario", workflow_id=workflow_id)
    return workflow_id


async def onboarding_approved(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "approved")
    status = await reach(handle, "waiting for the KYC result")
    await _decide(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_resubmitted(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "resubmitted")
    status = await reach(handle, "waiting for the KYC result")
    await _decide(
        settings,
        status.applicant_id or "",
        KycDecision.RED,
        KycRejectType.RETRY,
        ("DOCUMENT_BLURRY",),
    )
    await reach(handle, "waiting for resubmitted documents")
    await resubmit(client, status.customer_id, Resubmission(documents=[PASSPORT]))
    status = await reach(handle, "waiting for the KYC result")
    await _decide(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_rejected(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "rejected")
    status = await reach(handle, "waiting for the KYC result")
    await _decide(
        settings, status.applicant_id or "", KycDecision.RED, KycRejectType.FINAL, ("FORGERY",)
    )
    await handle.result()
    return handle.id


async def onboarding_reviewed(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "reviewed")
    status = await reach(handle, "waiting for the KYC result")
    await _decide(settings, status.applicant_id or "", KycDecision.ON_HOLD)
    await reach(handle, "in operator review")
    await review(
        client,
        status.customer_id,
        KycReview(decision="approve", reason="documents match", operator="op-demo"),
    )
    await handle.result()
    return handle.id


async def onboarding_expired(client: Client, settings: Settings) -> str:
    handle = await _onboard(
        client, settings, "expired", OnboardingPolicy(kyc_result_wait_seconds=1)
    )
    await handle.result()
    return handle.id


async def _fund_wallet(settings: Settings, customer_id: str, amount_minor: int) -> None:
    """A bank transfer arrives in the customer's USD wallet (straight to the ledger)."""
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        await ledger.open_account(system_account("bank:inbound:USD"))
        await ledger.transfer(
            TransferRequest(
                key=f"scenario-funding/{customer_id}",
                debit="bank:inbound:USD",
                credit=wallet_code(customer_id, "USD"),
                amount_minor=amount_minor,
                currency=Currency.USD,
            )
        )
    finally:
        await pool.close()


async def card_virtual(client: Client, settings: Settings) -> list[str]:
    """An approved customer gets a virtual card, freezes, unfreezes and closes it."""
    onboarding = await onboarding_approved(client, settings)
    customer_id = onboarding.removeprefix("onboarding/")
    await _fund_wallet(settings, customer_id, 10_000)
    issued = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"scenario-{uuid.uuid4().hex[:8]}",
            customer_id=customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
        ),
    )
    result = await issued.result()
    card = client.get_workflow_handle(card_workflow_id(result.card_id or ""))
    for update in (FREEZE_UPDATE, UNFREEZE_UPDATE, CLOSE_UPDATE):
        await card.execute_update(update, CardStateChange(reason="scenario"))
    await card.result()
    return [issued.id, card.id]


SCENARIOS: dict[str, Scenario] = {
    "ping": ping_scenario,
    "onboarding-approved": onboarding_approved,
    "onboarding-resubmitted": onboarding_resubmitted,
    "onboarding-rejected": onboarding_rejected,
    "onboarding-reviewed": onboarding_reviewed,
    "onboarding-expired": onboarding_expired,
    "card-virtual": card_virtual,
}


async def demo(client: Client, settings: Settings, say: Callable[[str, str | None], None]) -> None:
    """The walk-through `make demo` prints: onboarding, a virtual and a physical card."""
    from activities.providers.issuer import IssuerClient
    from schemas.cards import CardIssueStatus
    from schemas.issuer import ShippingStatus
    from starters.cards import activate

    profile = new_customer("demo")
    handle = await start_onboarding(
        client, settings.task_queues, OnboardingInput(profile=profile, documents=[PASSPORT])
    )
    say(f"Onboarding {profile.customer_id}: wallets opened, KYC applicant created", handle.id)
    status = await reach(handle, "waiting for the KYC result")
    await _decide(settings, status.applicant_id or "", KycDecision.GREEN)
    say("KYC provider answered GREEN (signed webhook -> gateway -> workflow)", None)
    result = await handle.result()
    say(f"Onboarding {result.outcome}: wallets {', '.join(result.wallets)}", handle.id)
    await _fund_wallet(settings, profile.customer_id, 50_000)
    say("Bank transfer of 500.00 USD credited to the USD wallet", None)

    virtual = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"demo-virtual-{uuid.uuid4().hex[:6]}",
            customer_id=profile.customer_id,
            kind="virtual",
            address=SCENARIO_ADDRESS,
        ),
    )
    issued = await virtual.result()
    say(f"Virtual card {issued.card_id} open at once (fee {issued.fee_minor})", virtual.id)
    say("Its card entity workflow runs for the card's life", card_workflow_id(issued.card_id or ""))

    physical = await issue_card(
        client,
        settings.task_queues,
        CardIssueInput(
            request_id=f"demo-physical-{uuid.uuid4().hex[:6]}",
            customer_id=profile.customer_id,
            kind="physical",
            address=SCENARIO_ADDRESS,
        ),
    )
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        shipping = await physical.query("status", result_type=CardIssueStatus)
        if shipping.stage == "shipping":
            break
        await asyncio.sleep(0.05)
    card_id = shipping.card_id or ""
    say(f"Physical card {card_id} ordered; following its shipment", physical.id)
    async with IssuerClient(f"{settings.providers_base_url}/issuer") as issuer:
        for step in (ShippingStatus.SUBMITTED, ShippingStatus.SHIPPED, ShippingStatus.DELIVERED):
            await issuer.simulate_shipping(
                card_id, status=step, carrier="DHL", idempotency_key=f"demo-{card_id}-{step.value}"
            )
            while True:
                seen = (await physical.query("status", result_type=CardIssueStatus)).shipping
                if seen is not None and seen.status is step:
                    break
                await asyncio.sleep(0.05)
            say(
                f"Shipping {step.value}: carrier {seen.carrier or '-'}, tracking "
                f"{seen.tracking_number or '-'}, ETA {seen.eta or '-'}",
                None,
            )
    request_id = physical.id.removeprefix("card-issue/")
    say(await activate(client, request_id), None)
    done = await physical.result()
    say(f"Physical card {done.card_id} {done.state} (fee {done.fee_minor})", physical.id)
