"""What cardflow reads from the KYC provider: applicants, documents, checks.

The data of the provider's `check.pending`, `check.on_hold` and
`check.completed` webhooks is a KycCheck; that of `applicant.created` is a
KycApplicant.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel


class KycDocumentType(StrEnum):
    PASSPORT = "passport"
    ID_CARD = "id_card"
    DRIVING_LICENCE = "driving_licence"
    SELFIE = "selfie"


class KycApplicantStatus(StrEnum):
    CREATED = "created"
    PENDING = "pending"
    ON_HOLD = "on_hold"
    APPROVED = "approved"
    # The last check was RED with reject type RETRY: new documents and a new
    # check may follow.
    RESUBMISSION_REQUESTED = "resubmission_requested"
    # The last check was RED with reject type FINAL: no further checks.
    REJECTED = "rejected"


class KycCheckStatus(StrEnum):
    PENDING = "pending"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"


class KycReviewResult(StrEnum):
    GREEN = "GREEN"
    RED = "RED"


class KycDecision(StrEnum):
    """A reviewer's decision (the simulate endpoint): a result, or a hold."""

    GREEN = "GREEN"
    RED = "RED"
    ON_HOLD = "ON_HOLD"


class KycRejectType(StrEnum):
    RETRY = "RETRY"
    FINAL = "FINAL"


class KycApplicant(BaseModel):
    id: str
    external_customer_id: str
    first_name: str
    last_name: str
    date_of_birth: date
    country: str
    status: KycApplicantStatus
    document_ids: list[str]
    # Oldest first; the last one is the current check.
    check_ids: list[str]
    created_at: AwareDatetime


class KycDocument(BaseModel):
    id: str
    applicant_id: str
    type: KycDocumentType
    country: str | None
    file_name: str
    uploaded_at: AwareDatetime


class KycCheck(BaseModel):
    id: str
    applicant_id: str
    external_customer_id: str
    status: KycCheckStatus
    # Set once the check is completed; reject_type and reject_labels only when RED.
    result: KycReviewResult | None
    reject_type: KycRejectType | None
    reject_labels: list[str]
    document_ids: list[str]
    created_at: AwareDatetime
    completed_at: AwareDatetime | None


class KycLink(BaseModel):
    """A link to the provider's own page where the person uploads documents;
    their upload starts the check."""

    url: str
    applicant_id: str
    expires_at: AwareDatetime
