"""Onboarding (KYC): input, policy, the messages it waits for, and its result."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.customers import CustomerProfile
from schemas.edge import EdgeModel
from schemas.kyc import KycDocumentType
from schemas.money import Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)


class OnboardingPolicy(BaseModel):
    """Every wait is a policy value, so tests run the same code in seconds."""

    wallet_currencies: list[Currency] = Field(
        default_factory=lambda: [Currency.USD, Currency.EUR], min_length=1, max_length=len(Currency)
    )
    kyc_result_wait_seconds: int = Field(default=7 * DAY_SECONDS, ge=1)
    resubmission_wait_seconds: int = Field(default=14 * DAY_SECONDS, ge=1)
    review_wait_seconds: int = Field(default=5 * DAY_SECONDS, ge=1)
    kyc_attempts_max: int = Field(default=3, ge=1, le=10)


class DocumentSpec(EdgeModel):
    type: KycDocumentType
    country: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    file_name: str = Field(min_length=1, max_length=200)


# Documents an application brings; none: the customer uploads them at the KYC
# provider's own page, whose link the onboarding sends them.
Documents = Annotated[
    list[DocumentSpec],
    Field(
        default_factory=list,
        max_length=10,
        description="The documents; empty: the customer is sent the KYC provider's link"
        " and uploads them there",
    ),
]


class OnboardingInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    profile: CustomerProfile
    documents: Documents
    policy: OnboardingPolicy = Field(default_factory=OnboardingPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


class ApplicantRequest(BaseModel):
    key: str
    profile: CustomerProfile


class DocumentUpload(BaseModel):
    key: str
    applicant_id: str
    document: DocumentSpec


class LinkRequest(BaseModel):
    """A link to the KYC provider's upload page for the applicant, once per key."""

    key: str
    applicant_id: str


class CheckRequest(BaseModel):
    """Start a KYC check of the applicant's documents, once per key."""

    key: str
    applicant_id: str


class KycResult(BaseModel):
    """A KYC provider's verdict on one check, as the gateway delivers it."""

    check_id: str
    status: Literal["pending", "on_hold", "completed"]
    result: Literal["GREEN", "RED"] | None = None
    reject_type: Literal["RETRY", "FINAL"] | None = None
    reject_labels: list[str] = Field(default_factory=list)


class KycReview(EdgeModel):
    """An operator's decision on an application the provider put on hold."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field(min_length=3, max_length=500)
    operator: str = Field(min_length=1, max_length=100)


class Resubmission(EdgeModel):
    documents: list[DocumentSpec] = Field(min_length=1, max_length=10)


OnboardingOutcome = Literal["approved", "rejected", "expired"]


class OnboardingResult(BaseModel):
    customer_id: str
    outcome: OnboardingOutcome
    reason: str
    applicant_id: str | None
    wallets: list[str]
    attempts: int


class OnboardingStatus(BaseModel):
    customer_id: str
    stage: str
    outcome: OnboardingOutcome | None
    applicant_id: str | None
    attempts: int
    wallets: list[str]
    last_check: KycResult | None
    # The KYC provider's upload page the customer was sent, when they upload there.
    verification_url: str | None = None
