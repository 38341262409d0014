"""The onboarding's scenarios: a customer approved, asked to resubmit,
rejected, reviewed by an operator, or left to expire; and one who uploads
their documents at the KYC provider's page they were sent."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle

from schemas.kyc import KycDecision, KycRejectType
from schemas.onboarding import KycReview, OnboardingInput, OnboardingPolicy, Resubmission
from starters.onboarding import resubmit, review, start_onboarding
from starters.scenario_steps import PASSPORT, decide_kyc, new_customer, reach
from workers.settings import Settings


async def _onboard(
    client: Client,
    settings: Settings,
    tag: str,
    policy: OnboardingPolicy | None = None,
    *,
    uploaded_by_customer: bool = False,
) -> WorkflowHandle[Any, Any]:
    request = OnboardingInput(
        profile=new_customer(tag),
        documents=[] if uploaded_by_customer else [PASSPORT],
        policy=policy or OnboardingPolicy(),
    )
    return await start_onboarding(client, settings.task_queues, request)


async def onboarding_approved(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "approved")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_uploaded(client: Client, settings: Settings) -> str:
    """No documents given: the customer is sent the provider's page and
    uploads a passport's photo there, which starts the check."""
    handle = await _onboard(client, settings, "uploaded", uploaded_by_customer=True)
    status = await reach(handle, "waiting for the customer's documents")
    async with httpx.AsyncClient(timeout=10) as browser:
        uploaded = await browser.post(
            status.verification_url or "",
            data={"type": "passport", "country": "DEU"},
            files={"file": ("passport.jpg", b"\xff\xd8\xff a photo", "image/jpeg")},
        )
    uploaded.raise_for_status()
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_resubmitted(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "resubmitted")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(
        settings,
        status.applicant_id or "",
        KycDecision.RED,
        KycRejectType.RETRY,
        ("DOCUMENT_BLURRY",),
    )
    await reach(handle, "waiting for resubmitted documents")
    await resubmit(client, status.customer_id, Resubmission(documents=[PASSPORT]))
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.GREEN)
    await handle.result()
    return handle.id


async def onboarding_rejected(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "rejected")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(
        settings, status.applicant_id or "", KycDecision.RED, KycRejectType.FINAL, ("FORGERY",)
    )
    await handle.result()
    return handle.id


async def onboarding_reviewed(client: Client, settings: Settings) -> str:
    handle = await _onboard(client, settings, "reviewed")
    status = await reach(handle, "waiting for the KYC result")
    await decide_kyc(settings, status.applicant_id or "", KycDecision.ON_HOLD)
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
