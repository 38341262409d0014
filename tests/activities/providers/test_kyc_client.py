"""The KYC client against the real simulator: typed results, outcomes, faults."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.providers.kyc import KycClient
from schemas.kyc import (
    KycApplicant,
    KycApplicantStatus,
    KycCheck,
    KycCheckStatus,
    KycDecision,
    KycDocumentType,
    KycRejectType,
    KycReviewResult,
)
from tests import polling

# Bounds how long a test waits for webhooks, and for the outbox to empty.
WEBHOOK_WAIT_SECONDS_MAX = 10


def client(sim: Any) -> KycClient:
    return KycClient(sim.provider_url("kyc"))


@pytest.fixture
def customer_id() -> str:
    """A customer of the test's own: ids restart at 1 after each reset, so a
    webhook is told apart from an earlier test's by its customer id."""
    return f"cus_{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
async def drained(sim: Any) -> AsyncIterator[None]:
    """After each test, wait (asynchronously: the receiver runs on this loop)
    until its webhooks have landed, so none reaches the next test."""
    yield
    async with httpx.AsyncClient(base_url=sim.url) as http:

        async def outbox_empty() -> bool:
            return bool((await http.get("/_admin/health")).json()["webhooks_pending"] == 0)

        await polling.settled(outbox_empty, WEBHOOK_WAIT_SECONDS_MAX)


async def applicant(kyc: KycClient, customer_id: str, key: str = "applicant-1") -> KycApplicant:
    return await kyc.create_applicant(
        external_customer_id=customer_id,
        first_name="Grace",
        last_name="Hopper",
        date_of_birth=date(1986, 12, 9),
        country="USA",
        idempotency_key=key,
    )


async def with_passport(kyc: KycClient, customer_id: str) -> KycApplicant:
    created = await applicant(kyc, customer_id)
    await kyc.add_document(
        created.id,
        document_type=KycDocumentType.PASSPORT,
        country="USA",
        file_name="passport.png",
        idempotency_key=f"{customer_id}-passport",
    )
    return created


async def test_an_applicant_is_approved_through_the_client(
    sim: Any, webhook_sink: Any, customer_id: str
) -> None:
    async with client(sim) as kyc:
        created = await with_passport(kyc, customer_id)
        selfie = await kyc.add_document(
            created.id,
            document_type=KycDocumentType.SELFIE,
            country=None,
            file_name="selfie.png",
            idempotency_key="selfie-1",
        )
        started = await kyc.start_check(created.id, idempotency_key="check-1")
        assert started.status is KycCheckStatus.PENDING and started.result is None
        decided = await kyc.simulate_decision(
            created.id, result=KycDecision.GREEN, idempotency_key="decide-1"
        )
        assert decided.id == started.id and decided.result is KycReviewResult.GREEN
        assert await kyc.get_check(started.id) == decided
        found = await kyc.get_applicant(created.id)
    assert found.status is KycApplicantStatus.APPROVED
    assert found.check_ids == [started.id] and selfie.id in found.document_ids
    # The webhook carries the same check the API answers with.
    deadline = time.monotonic() + WEBHOOK_WAIT_SECONDS_MAX
    completed: list[dict[str, Any]] = []
    while not completed and time.monotonic() < deadline:
        await webhook_sink.arrived(len(webhook_sink.received) + 1, seconds=0.1)
        completed = [
            r.event["data"]
            for r in webhook_sink.received
            if r.event["type"] == "check.completed"
            and r.event["data"]["external_customer_id"] == customer_id
        ]
    assert [KycCheck.model_validate(data) for data in completed] == [decided]


async def test_a_retry_rejection_is_followed_by_a_new_check(sim: Any, customer_id: str) -> None:
    async with client(sim) as kyc:
        created = await with_passport(kyc, customer_id)
        first = await kyc.start_check(created.id, idempotency_key="check-1")
        rejected = await kyc.simulate_decision(
            created.id,
            result=KycDecision.RED,
            reject_type=KycRejectType.RETRY,
            labels=["DOCUMENT_DAMAGED"],
            idempotency_key="decide-1",
        )
        assert rejected.reject_type is KycRejectType.RETRY
        assert rejected.reject_labels == ["DOCUMENT_DAMAGED"]
        second = await kyc.start_check(created.id, idempotency_key="check-2")
        found = await kyc.get_applicant(created.id)
    assert second.id != first.id and second.status is KycCheckStatus.PENDING
    assert found.status is KycApplicantStatus.PENDING
    assert found.check_ids == [first.id, second.id]


async def test_after_a_final_rejection_a_new_check_is_a_final_conflict(
    sim: Any, customer_id: str
) -> None:
    async with client(sim) as kyc:
        created = await with_passport(kyc, customer_id)
        await kyc.start_check(created.id, idempotency_key="check-1")
        await kyc.simulate_decision(
            created.id,
            result=KycDecision.RED,
            reject_type=KycRejectType.FINAL,
            labels=["FORGERY"],
            idempotency_key="decide-1",
        )
        with pytest.raises(ApplicationError) as error:
            await kyc.start_check(created.id, idempotency_key="check-2")
        assert (await kyc.get_applicant(created.id)).status is KycApplicantStatus.REJECTED
    assert error.value.type == "ProviderConflict" and error.value.non_retryable
    assert error.value.details[0]["status"] == 409


async def test_an_invalid_decision_is_a_final_rejected_request(sim: Any, customer_id: str) -> None:
    async with client(sim) as kyc:
        created = await with_passport(kyc, customer_id)
        await kyc.start_check(created.id, idempotency_key="check-1")
        with pytest.raises(ApplicationError) as error:
            await kyc.simulate_decision(
                created.id, result=KycDecision.RED, labels=["FORGERY"], idempotency_key="d-1"
            )
    assert error.value.type == "ProviderRejectedRequest" and error.value.non_retryable
    assert "reject_type" in str(error.value)


async def test_an_unavailable_provider_is_retryable_and_a_keyed_retry_creates_one_applicant(
    sim: Any, customer_id: str
) -> None:
    sim.fault(path_prefix="/kyc/v1/applicants", method="POST", kind="error", status=503, times=1)
    async with client(sim) as kyc:
        with pytest.raises(ApplicationError) as error:
            await applicant(kyc, customer_id, key=f"onboarding/{customer_id}/create")
        assert error.value.type == "ProviderUnavailable" and not error.value.non_retryable
        created = await applicant(kyc, customer_id, key=f"onboarding/{customer_id}/create")
        replayed = await applicant(kyc, customer_id, key=f"onboarding/{customer_id}/create")
    assert replayed == created and created.id == "app_000001"
    announced = [d for d in sim.admin("GET", "/webhooks") if d["type"] == "applicant.created"]
    assert len(announced) == 1


async def test_a_short_rate_limit_is_waited_out_in_the_call(sim: Any, customer_id: str) -> None:
    async with client(sim) as kyc:
        created = await with_passport(kyc, customer_id)
        sim.fault(
            path_prefix=f"/kyc/v1/applicants/{created.id}/checks",
            kind="rate_limit",
            seconds=1,
            times=1,
        )
        started_at = time.monotonic()
        check = await kyc.start_check(created.id, idempotency_key="check-1")
    assert time.monotonic() - started_at >= 1.0
    assert check.status is KycCheckStatus.PENDING


async def test_an_unknown_applicant_is_final_not_found(sim: Any) -> None:
    async with client(sim) as kyc:
        with pytest.raises(ApplicationError) as error:
            await kyc.get_applicant("app_999999")
    assert error.value.type == "ProviderNotFound" and error.value.non_retryable
