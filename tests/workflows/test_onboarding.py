"""Onboarding through the KYC simulator, its real webhooks and the gateway."""

from __future__ import annotations

import logging
import uuid
from datetime import date
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import Ledger
from schemas.customers import CustomerProfile
from schemas.kyc import KycDocumentType
from schemas.notify import Channel
from schemas.onboarding import (
    DocumentSpec,
    KycReview,
    OnboardingInput,
    OnboardingPolicy,
    OnboardingResult,
    OnboardingStatus,
    Resubmission,
)
from tests import customers, polling
from tests.conftest import Platform
from tests.interruptions import table_locked, until_activity_cancel_requested, until_waiting
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    RESUBMIT_SIGNAL,
    REVIEW_UPDATE,
    onboarding_workflow_id,
    wallet_code,
)

PASSPORT = DocumentSpec(type=KycDocumentType.PASSPORT, country="DEU", file_name="passport.jpg")
# What the server answers an update sent to a workflow that has closed.
WORKFLOW_COMPLETED_MESSAGE = "workflow execution already completed"


async def start(
    platform: Platform,
    policy: OnboardingPolicy | None = None,
    customer_id: str | None = None,
    profile: CustomerProfile | None = None,
    documents: list[DocumentSpec] | None = None,
) -> WorkflowHandle[Any, OnboardingResult]:
    profile = profile or customers.profile(customer_id, country="DEU")
    queues = platform.stack.queues
    return await platform.stack.client.start_workflow(
        ONBOARDING_WORKFLOW,
        OnboardingInput(
            profile=profile,
            documents=[PASSPORT] if documents is None else documents,
            policy=policy or OnboardingPolicy(),
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
        ),
        id=onboarding_workflow_id(profile.customer_id),
        task_queue=queues.workflows,
        result_type=OnboardingResult,
    )


async def reach(
    handle: WorkflowHandle[Any, Any], stage: str, seconds: float = 20
) -> OnboardingStatus:
    async def status() -> OnboardingStatus:
        answer: OnboardingStatus = await handle.query("status", result_type=OnboardingStatus)
        return answer

    return await polling.until(
        status, lambda answer: answer.stage == stage, f"reached {stage!r}", seconds
    )


async def refused(handle: WorkflowHandle[Any, Any], review: Any) -> str:
    """The refusal of a review update, as "type: message" (the type is the
    Refusal code when the workflow refused it)."""
    try:
        await handle.execute_update(REVIEW_UPDATE, review)
    except WorkflowUpdateFailedError as error:
        assert isinstance(error.cause, ApplicationError), error.cause
        return f"{error.cause.type}: {error.cause.message}"
    except RPCError as error:
        # The workflow has closed: the server refuses the update itself. Any
        # other error (the server unreachable, a timeout) is no refusal.
        closed = (RPCStatusCode.NOT_FOUND, WORKFLOW_COMPLETED_MESSAGE)
        if (error.status, error.message) != closed:
            raise
        return f"already finished: {error.message}"
    raise AssertionError("the review was accepted")


def decide(
    platform: Platform,
    applicant_id: str,
    result: str,
    reject_type: str | None = None,
    labels: list[str] | None = None,
) -> None:
    """The KYC provider decides the applicant's open check: it answers the
    check, on hold or completed with exactly the verdict asked for."""
    response = httpx.post(
        f"{platform.sim.provider_url('kyc')}/v1/simulate/applicants/{applicant_id}/decide",
        json={"result": result, "reject_type": reject_type, "labels": labels or []},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    check = response.json()
    verdict: tuple[str, str | None, str | None, list[str]]
    if result == "ON_HOLD":
        verdict = ("on_hold", None, None, [])
    else:
        verdict = ("completed", result, reject_type, labels or [])
    assert check["applicant_id"] == applicant_id, check
    assert (
        check["status"],
        check["result"],
        check["reject_type"],
        check["reject_labels"],
    ) == verdict, check


def messages_to(platform: Platform, email: str) -> list[str]:
    response = httpx.get(
        f"{platform.sim.provider_url('notify')}/v1/messages", params={"to": email}, timeout=10
    )
    assert response.status_code == 200, response.text
    return [m["body"] for m in response.json()["data"]]


async def wallet_statuses(platform: Platform, customer_id: str) -> set[str]:
    ledger = Ledger(platform.stack.pool)
    return {(await ledger.get_account(wallet_code(customer_id, c))).status for c in ("USD", "EUR")}


async def kyc_status(platform: Platform, customer_id: str) -> str:
    return str(
        await platform.stack.pool.fetchval(
            "SELECT kyc_status FROM customers WHERE customer_id = $1", customer_id
        )
    )


async def test_green_approves_and_leaves_the_wallets_open(platform: Platform) -> None:
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    assert status.applicant_id and len(status.wallets) == 2
    decide(platform, status.applicant_id, "GREEN")
    result = await handle.result()
    customer = result.customer_id
    assert result.outcome == "approved" and result.attempts == 1
    assert await wallet_statuses(platform, customer) == {"open"}
    assert await kyc_status(platform, customer) == "approved"
    assert any("verified" in body for body in messages_to(platform, f"{customer}@example.com"))


async def test_red_retry_asks_to_resubmit_and_a_second_check_approves(platform: Platform) -> None:
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    decide(platform, status.applicant_id or "", "RED", "RETRY", ["DOCUMENT_BLURRY"])
    await reach(handle, "waiting for resubmitted documents")
    selfie = DocumentSpec(type=KycDocumentType.ID_CARD, country="DEU", file_name="id.jpg")
    await handle.signal(RESUBMIT_SIGNAL, Resubmission(documents=[selfie]))
    status = await reach(handle, "waiting for the KYC result")
    assert status.attempts == 2
    decide(platform, status.applicant_id or "", "GREEN")
    result = await handle.result()
    assert result.outcome == "approved" and result.attempts == 2
    bodies = messages_to(platform, f"{result.customer_id}@example.com")
    assert any("upload them again" in body for body in bodies)


async def test_retries_beyond_the_policy_reject(platform: Platform) -> None:
    handle = await start(platform, OnboardingPolicy(kyc_attempts_max=1))
    status = await reach(handle, "waiting for the KYC result")
    decide(platform, status.applicant_id or "", "RED", "RETRY", ["DOCUMENT_BLURRY"])
    result = await handle.result()
    assert result.outcome == "rejected" and "1 times" in result.reason
    assert await wallet_statuses(platform, result.customer_id) == {"closed"}


async def test_red_final_rejects_and_closes_the_wallets(platform: Platform) -> None:
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    decide(platform, status.applicant_id or "", "RED", "FINAL", ["FORGERY"])
    result = await handle.result()
    assert result.outcome == "rejected" and "FORGERY" in result.reason
    assert await wallet_statuses(platform, result.customer_id) == {"closed"}
    assert await kyc_status(platform, result.customer_id) == "rejected"


async def test_on_hold_waits_for_a_valid_operator_review(platform: Platform) -> None:
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    early = KycReview(decision="approve", reason="looks fine", operator="op1")
    assert await refused(handle, early) == (
        "wrong_state: no review is pending (stage: waiting for the KYC result)"
    )
    decide(platform, status.applicant_id or "", "ON_HOLD")
    await reach(handle, "in operator review")
    # A malformed review never reaches the workflow's code: the SDK refuses to
    # decode it, and the cause names each field pydantic refused.
    with pytest.raises(WorkflowUpdateFailedError) as malformed:
        await handle.execute_update(
            REVIEW_UPDATE, {"decision": "maybe", "reason": "x", "operator": ""}
        )
    decoding = malformed.value.cause
    assert isinstance(decoding, ApplicationError), decoding
    assert (decoding.type, decoding.message) == ("RuntimeError", "Failed decoding arguments")
    fields = decoding.cause
    assert isinstance(fields, ApplicationError) and fields.type == "ValidationError", fields
    assert "decision" in fields.message and "reason" in fields.message, fields.message
    assert "operator" in fields.message, fields.message
    answer = await handle.execute_update(
        REVIEW_UPDATE,
        KycReview(decision="approve", reason="documents match", operator="op7"),
        result_type=str,
    )
    assert answer == "approve recorded"
    result = await handle.result()
    assert result.outcome == "approved" and "op7" in result.reason
    late = KycReview(decision="reject", reason="too late", operator="op8")
    assert await refused(handle, late) == f"already finished: {WORKFLOW_COMPLETED_MESSAGE}"


async def test_no_result_within_the_policy_expires_and_cleans_up(platform: Platform) -> None:
    handle = await start(platform, OnboardingPolicy(kyc_result_wait_seconds=2))
    result = await handle.result()
    assert result.outcome == "expired"
    assert await wallet_statuses(platform, result.customer_id) == {"closed"}
    assert await kyc_status(platform, result.customer_id) == "expired"
    assert any(
        "expired" in m.lower() or "in time" in m
        for m in messages_to(platform, f"{result.customer_id}@example.com")
    )


async def test_repeated_and_reordered_verdicts_reach_the_onboarding_once(
    platform: Platform,
) -> None:
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    decide(platform, status.applicant_id or "", "ON_HOLD")
    decide(platform, status.applicant_id or "", "GREEN")
    # The final verdict arrives first, then the older on-hold, each twice.
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    result = await handle.result()
    assert result.outcome == "approved" and result.attempts == 1


async def test_without_documents_the_customer_uploads_at_the_providers_page_and_again_on_retry(
    platform: Platform,
) -> None:
    profile = customers.profile(country="DEU")
    person = f"{profile.first_name} {profile.last_name}"
    handle = await start(platform, profile=profile, documents=[])
    first = await reach(handle, "waiting for the customer's documents")
    assert first.verification_url is not None and first.attempts == 1
    assert messages_to(platform, str(profile.email)) == [
        f"Open {first.verification_url} and photograph your passport, ID card or driving licence."
    ]
    assert (await customers.upload_at(first.verification_url, person)).status_code == 201
    status = await reach(handle, "waiting for the KYC result")
    # Uploading twice starts no second check.
    assert (await customers.upload_at(first.verification_url, person)).status_code == 409
    decide(platform, status.applicant_id or "", "RED", "RETRY", ["DOCUMENT_DAMAGED"])

    again = await reach(handle, "waiting for the customer's documents")
    assert again.attempts == 2 and again.verification_url not in (None, first.verification_url)
    assert messages_to(platform, str(profile.email))[-1] == (
        f"We could not verify your documents. Open {again.verification_url} and photograph"
        " your passport, ID card or driving licence."
    )
    platform.sim.admin("POST", "/webhooks", {"hold": True, "duplicate": True})
    assert (await customers.upload_at(str(again.verification_url), person)).status_code == 201
    decide(platform, status.applicant_id or "", "GREEN")
    # The verdict arrives before the check's start, each twice: the
    # onboarding learns the check from whichever comes first.
    platform.sim.admin("POST", "/webhooks/release", {"order": "reverse"})
    result = await handle.result()
    assert (result.outcome, result.attempts) == ("approved", 2)


async def test_transient_kyc_outage_is_retried(platform: Platform) -> None:
    platform.sim.fault(path_prefix="/kyc/v1/applicants", kind="error", status=503, times=2)
    handle = await start(platform)
    status = await reach(handle, "waiting for the KYC result")
    decide(platform, status.applicant_id or "", "GREEN")
    assert (await handle.result()).outcome == "approved"


async def test_a_provider_refusal_after_the_wallets_opened_closes_them(
    platform: Platform,
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    # The provider already knows this customer under another request: it refuses.
    taken = httpx.post(
        f"{platform.sim.provider_url('kyc')}/v1/applicants",
        json={
            "external_customer_id": customer_id,
            "first_name": "Ada",
            "last_name": "L",
            "date_of_birth": "1990-12-10",
            "country": "DEU",
        },
        timeout=10,
    )
    assert taken.status_code == 201, taken.text
    handle = await start(platform, customer_id=customer_id)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    # Failed on the provider's refusal (a conflict, not retried), nothing else.
    refusal = failed.value.cause.__cause__
    assert isinstance(refusal, ApplicationError), failed.value.cause
    assert refusal.type == "ProviderConflict" and " 409 " in refusal.message, refusal
    assert await wallet_statuses(platform, customer_id) == {"closed"}
    status: OnboardingStatus = await handle.query("status", result_type=OnboardingStatus)
    assert status.stage == "failed"


async def test_a_kyc_refusal_echoing_the_profile_leaves_no_personal_data_in_logs_or_failure(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    profile = CustomerProfile(
        customer_id=customer_id,
        first_name="Augusta",
        last_name="Byron-Kingsley",
        date_of_birth=date(1985, 3, 17),
        country="GBR",
        email="augusta.bk@example.org",
    )
    personal = ["Augusta", "Byron-Kingsley", "1985-03-17", "augusta.bk@example.org"]
    # The provider refuses the applicant with a 422 that repeats everything it was sent.
    platform.sim.fault(path_prefix="/kyc/v1/applicants", method="POST", kind="reject")
    handle = await start(platform, profile=profile)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert await wallet_statuses(platform, customer_id) == {"closed"}

    # The failure as the client (and an operator, through the codec) reads it.
    chain: list[BaseException] = []
    cause: BaseException | None = failed.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    failure_texts = [str(e) for e in chain] + [repr(getattr(e, "details", ())) for e in chain]
    # What the workers logged: the SDK logs the failed activity with its message.
    formatter = logging.Formatter()
    log_texts = [formatter.format(r) + repr(r.__dict__) for r in caplog.records]
    assert any("Completing activity as failed" in text for text in log_texts)
    for value in personal:
        assert not [t for t in failure_texts if value in t], value
        assert not [t for t in log_texts if value in t], value
    # What is kept to follow the refusal up: the status and the provider's request id.
    refusal = next(e for e in chain if isinstance(e, ApplicationError))
    assert refusal.type == "ProviderRejectedRequest"
    assert "422" in refusal.message and "(request req_" in refusal.message


async def test_a_cancellation_while_a_wallet_opens_closes_it_once_it_opened(
    platform: Platform,
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    async with table_locked(platform.stack.database_url, "ledger_accounts") as lock:
        handle = await start(platform, customer_id=customer_id)
        # The first wallet's opening waits for the ledger; onboarding is cancelled there.
        await until_waiting(platform.stack.pool, lock)
        await handle.cancel()
        await until_activity_cancel_requested(handle)
    # The ledger free again, the interrupted opening opens the wallet after all.
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    ledger = Ledger(platform.stack.pool)
    assert (await ledger.get_account(wallet_code(customer_id, "USD"))).status == "closed"
    status: OnboardingStatus = await handle.query("status", result_type=OnboardingStatus)
    assert status.stage == "cancelled"


async def test_the_api_starts_once_per_key_and_takes_the_operator_review(
    platform: Platform,
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    body = {
        "profile": {
            "customer_id": customer_id,
            "first_name": "Grace",
            "last_name": "Hopper",
            "date_of_birth": "1985-12-09",
            "country": "USA",
            "email": f"{customer_id}@example.com",
        },
        "documents": [PASSPORT.model_dump(mode="json")],
    }
    async with httpx.AsyncClient(
        base_url=platform.gateway_url, timeout=30, headers=platform.api_headers
    ) as api:
        first = await api.post("/v1/onboardings", json=body, headers={"Idempotency-Key": "ob-1"})
        again = await api.post("/v1/onboardings", json=body, headers={"Idempotency-Key": "ob-1"})
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["workflow_id"] == again.json()["workflow_id"]
        handle = platform.stack.client.get_workflow_handle(
            first.json()["workflow_id"], result_type=OnboardingResult
        )
        status = await reach(handle, "waiting for the KYC result")
        decide(platform, status.applicant_id or "", "ON_HOLD")
        await reach(handle, "in operator review")
        bad = await api.post(
            f"/v1/onboardings/{customer_id}/review",
            json={"decision": "approve", "reason": "", "operator": "op"},
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "reason"]
        decided = await api.post(
            f"/v1/onboardings/{customer_id}/review",
            json={"decision": "reject", "reason": "name mismatch", "operator": "op9"},
        )
        assert decided.status_code == 200, decided.text
        assert decided.json() == {"result": "reject recorded"}
        assert (await handle.result()).outcome == "rejected"
        missing = await api.post(
            "/v1/onboardings/nobody/documents",
            json={"documents": [PASSPORT.model_dump(mode="json")]},
        )
        assert missing.status_code == 404, missing.text
        assert missing.json() == {"code": "not_found", "detail": "no running process for nobody"}


async def test_notifications_follow_the_customers_channel_preferences(platform: Platform) -> None:
    customer_id = customers.new_id()
    chat = uuid.uuid4().int % 10**12
    profile = customers.profile(
        customer_id,
        country="DEU",
        telegram_chat_id=str(chat),
        preferred_channels=[Channel.TELEGRAM, Channel.EMAIL],
    )
    handle = await start(platform, profile=profile)
    status = await reach(handle, "waiting for the KYC result")
    decide(platform, status.applicant_id or "", "GREEN")
    assert (await handle.result()).outcome == "approved"
    # Telegram is the customers' bot's own message; email goes through the provider.
    told = await customers.telegram_said(platform, chat)
    assert [text for text in told if "verified" in text] == [
        "Welcome to cardflow\n\nYour identity is verified and your wallets are open."
    ]
    assert any("verified" in body for body in messages_to(platform, f"{customer_id}@example.com"))
    with pytest.raises(ValueError, match="push has no address"):
        CustomerProfile(
            customer_id="x",
            first_name="A",
            last_name="B",
            date_of_birth=date(1990, 1, 1),
            country="DEU",
            email="a@example.com",
            preferred_channels=[Channel.PUSH],
        )
