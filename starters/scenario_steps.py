"""What the scenarios (starters/scenarios.py) are made of: a new customer
and their passport, waiting for an onboarding's stage or for any condition,
the KYC provider's decision, and money paid straight into a wallet."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from temporalio.client import WorkflowHandle

from activities.database import create_pool
from activities.ledger import Ledger
from activities.providers.kyc import KycClient
from schemas.accounts import system_account
from schemas.customers import CustomerProfile
from schemas.issuer import Address
from schemas.kyc import KycDecision, KycDocumentType, KycRejectType
from schemas.ledger import TransferRequest
from schemas.money import Currency
from schemas.onboarding import DocumentSpec, OnboardingStatus
from schemas.providers import KYC
from workers.settings import Settings
from workflows.onboarding import Onboarding, wallet_code

STAGE_WAIT_SECONDS_MAX = 60
# A scenario's closed card ends its process this soon (no late money comes).
SCENARIO_CLOSED_LINGER_SECONDS = 1
SCENARIO_ADDRESS = Address(
    line1="1 Analytical Way", city="London", postal_code="N1 9GU", country="GB"
)
PASSPORT = DocumentSpec(type=KycDocumentType.PASSPORT, country="DEU", file_name="passport.jpg")


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
        status = await handle.query(Onboarding.status)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.id} never reached {stage!r} (last: {status})")


async def decide_kyc(
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


async def fund_wallet(
    settings: Settings, customer_id: str, amount_minor: int, *, key: str = ""
) -> None:
    """A bank transfer arrives in the customer's USD wallet (straight to the
    ledger); `key` tells a customer's later transfers from the first."""
    pool = await create_pool(settings.effective_database_url, size_max=1)
    try:
        ledger = Ledger(pool)
        await ledger.open_account(system_account("bank:inbound:USD"))
        await ledger.transfer(
            TransferRequest(
                key=f"scenario-funding/{customer_id}" + (f"/{key}" if key else ""),
                debit="bank:inbound:USD",
                credit=wallet_code(customer_id, "USD"),
                amount_minor=amount_minor,
                currency=Currency.USD,
            )
        )
    finally:
        await pool.close()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(STAGE_WAIT_SECONDS_MAX * 20):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never: {what}")
