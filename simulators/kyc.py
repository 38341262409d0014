"""Identity verification modelled on Sumsub and Onfido: applicants, documents, checks.

    POST /kyc/v1/applicants                             register a customer to verify
    GET  /kyc/v1/applicants/{id}                        read an applicant back
    POST /kyc/v1/applicants/{id}/documents              record an uploaded document
    POST /kyc/v1/applicants/{id}/checks                 start a check; it is pending
    GET  /kyc/v1/checks/{id}                            read a check back
    POST /kyc/v1/applicants/{id}/links                  a link to the provider's own page
                                                        where the person uploads documents
    GET  /kyc/verify/{token}                            that page: a form
    POST /kyc/verify/{token}                            the person's upload (a form with the
                                                        document's type, country and file);
                                                        it starts the check, as Sumsub's
                                                        WebSDK and Onfido's hosted flow do
    POST /kyc/v1/simulate/applicants/{id}/decide        decide the applicant's open check

Webhooks: `applicant.created` (the applicant), then per check `check.pending`,
`check.on_hold` when a reviewer has to look, and `check.completed` with the
result (all three carry the check). A completed check is GREEN (approved) or
RED; a RED check's reject type says whether the customer may resubmit (RETRY:
upload new documents and start a new check) or is rejected for good (FINAL:
no more documents or checks).

Options (admin API, `PUT /_admin/options/kyc`):
    auto_result   a decision applied to every check as it starts, either a
                  result ("GREEN", "ON_HOLD") or a decision body
                  ({"result": "RED", "reject_type": "RETRY", "labels": [...]});
                  absent or null: checks wait for the simulate endpoint.
"""

from __future__ import annotations

import html
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from simulators.framework.context import SimulatorContext

NAME = "kyc"

NAME_CHARS_MAX = 100
EXTERNAL_ID_CHARS_MAX = 100
FILE_NAME_CHARS_MAX = 255
DOCUMENTS_PER_APPLICANT_MAX = 20
# Each RETRY allows one more check; a customer who needs more than this is a
# case for a human, not another automatic round.
CHECKS_PER_APPLICANT_MAX = 10
REJECT_LABELS_MAX = 10
# Nobody alive is older than this; an older birth date is a typing error.
AGE_YEARS_MAX = 130

# ISO 3166-1 alpha-3, as Sumsub and Onfido both use for countries.
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Sumsub-style reject labels: BAD_SELFIE, FORGERY, DOCUMENT_DAMAGED...
RejectLabel = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]

DocumentType = Literal["passport", "id_card", "driving_licence", "selfie"]
IDENTITY_DOCUMENT_TYPES: frozenset[str] = frozenset({"passport", "id_card", "driving_licence"})
ApplicantStatus = Literal[
    "created", "pending", "on_hold", "approved", "resubmission_requested", "rejected"
]
CheckStatus = Literal["pending", "on_hold", "completed"]
ReviewResult = Literal["GREEN", "RED"]
Decision = Literal["GREEN", "RED", "ON_HOLD"]
RejectType = Literal["RETRY", "FINAL"]

# Applicant states in which a check is open and waiting for a decision.
OPEN_CHECK_STATUSES: frozenset[str] = frozenset({"pending", "on_hold"})

# A verification link works this long (Sumsub's default lifetime is a day).
LINK_SECONDS = 24 * 3600
LINK_TOKEN_BYTES = 24
# A photo of a document, at most; a bigger upload is refused.
UPLOAD_BYTES_MAX = 10 * 1024 * 1024

APPLICANTS = "kyc.applicant"
LINKS = "kyc.link"
APPLICANT_BY_EXTERNAL_ID = "kyc.applicant_by_external_id"
DOCUMENTS = "kyc.document"
CHECKS = "kyc.check"


class ApplicantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_customer_id: str = Field(
        min_length=1, max_length=EXTERNAL_ID_CHARS_MAX, description="cardflow's customer id"
    )
    first_name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    last_name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    date_of_birth: date
    country: CountryCode = Field(description="Country of residence, ISO 3166-1 alpha-3")

    @field_validator("date_of_birth")
    @classmethod
    def _plausible_birth_date(cls, value: date) -> date:
        today = datetime.now(UTC).date()
        if value > today:
            raise ValueError("date_of_birth is in the future")
        if today.year - value.year > AGE_YEARS_MAX:
            raise ValueError(f"date_of_birth is more than {AGE_YEARS_MAX} years ago")
        return value


class Applicant(ApplicantIn):
    id: str
    status: ApplicantStatus
    document_ids: list[str]
    check_ids: list[str]
    created_at: datetime


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: DocumentType
    # Validated after `type`, which decides whether a country is required.
    country: CountryCode | None = Field(
        default=None,
        validate_default=True,
        description="Issuing country, ISO 3166-1 alpha-3; required for identity documents",
    )
    file_name: str = Field(min_length=1, max_length=FILE_NAME_CHARS_MAX)

    @field_validator("country")
    @classmethod
    def _identity_documents_name_their_issuer(
        cls, value: str | None, info: ValidationInfo
    ) -> str | None:
        if value is None and info.data.get("type") in IDENTITY_DOCUMENT_TYPES:
            raise ValueError(f"country is required for a {info.data['type']}")
        return value


class Document(DocumentIn):
    id: str
    applicant_id: str
    uploaded_at: datetime


class VerificationLink(BaseModel):
    url: str = Field(description="The provider's page where the person uploads documents")
    applicant_id: str
    expires_at: datetime


class Check(BaseModel):
    id: str
    applicant_id: str
    # Carried so a webhook consumer can route the event without a lookup.
    external_customer_id: str
    status: CheckStatus
    result: ReviewResult | None
    reject_type: RejectType | None
    reject_labels: list[str]
    document_ids: list[str]
    created_at: datetime
    completed_at: datetime | None


class DecisionIn(BaseModel):
    """A reviewer's decision. RED must say whether the customer may retry and
    why (labels); GREEN and ON_HOLD carry neither."""

    model_config = ConfigDict(extra="forbid")

    result: Decision
    # Both validated after `result`, against it, even when left out.
    reject_type: RejectType | None = Field(default=None, validate_default=True)
    labels: list[RejectLabel] = Field(
        default_factory=list, max_length=REJECT_LABELS_MAX, validate_default=True
    )

    @field_validator("reject_type")
    @classmethod
    def _reject_type_matches_result(
        cls, value: RejectType | None, info: ValidationInfo
    ) -> RejectType | None:
        result = info.data.get("result")
        if result == "RED" and value is None:
            raise ValueError("reject_type (RETRY or FINAL) is required when result is RED")
        if result in ("GREEN", "ON_HOLD") and value is not None:
            raise ValueError(f"reject_type must be null when result is {result}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_match_result(cls, value: list[str], info: ValidationInfo) -> list[str]:
        result = info.data.get("result")
        if result == "RED" and not value:
            raise ValueError("labels must name at least one reason when result is RED")
        if result in ("GREEN", "ON_HOLD") and value:
            raise ValueError(f"labels must be empty when result is {result}")
        return value


def _now() -> datetime:
    return datetime.now(UTC)


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="KYC provider (simulated)")
    store = context.store

    # Every handler below reads, checks and writes without awaiting in
    # between, so on the server's single event loop each one is atomic: two
    # concurrent requests cannot both pass a state check.

    def load_applicant(applicant_id: str) -> Applicant:
        found = store.get(APPLICANTS, applicant_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no applicant {applicant_id}")
        return Applicant(**found)

    def load_check(check_id: str) -> Check:
        found = store.get(CHECKS, check_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no check {check_id}")
        return Check(**found)

    def save_applicant(applicant: Applicant) -> None:
        store.put(APPLICANTS, applicant.id, applicant.model_dump(mode="json"))

    def save_check(check: Check) -> None:
        store.put(CHECKS, check.id, check.model_dump(mode="json"))

    def auto_decision() -> DecisionIn | None:
        configured = context.option(NAME, "auto_result", None)
        if configured is None:
            return None
        body = {"result": configured} if isinstance(configured, str) else configured
        try:
            return DecisionIn.model_validate(body)
        except ValidationError as error:
            # The simulator is misconfigured, not the request: a server error.
            raise HTTPException(
                status_code=500, detail=f"option kyc.auto_result is invalid: {error}"
            ) from None

    def decide(applicant: Applicant, check: Check, decision: DecisionIn) -> Check:
        """Apply a decision to an open check, update the applicant, announce it."""
        if decision.result == "ON_HOLD":
            if check.status == "on_hold":
                raise HTTPException(status_code=409, detail=f"check {check.id} is already on hold")
            check = check.model_copy(update={"status": "on_hold"})
            applicant = applicant.model_copy(update={"status": "on_hold"})
            event_type = "check.on_hold"
        else:
            check = check.model_copy(
                update={
                    "status": "completed",
                    "result": decision.result,
                    "reject_type": decision.reject_type,
                    "reject_labels": list(decision.labels),
                    "completed_at": _now(),
                }
            )
            if decision.result == "GREEN":
                status: ApplicantStatus = "approved"
            elif decision.reject_type == "RETRY":
                status = "resubmission_requested"
            else:
                status = "rejected"
            applicant = applicant.model_copy(update={"status": status})
            event_type = "check.completed"
        save_check(check)
        save_applicant(applicant)
        context.outbox.emit(NAME, event_type, check.model_dump(mode="json"))
        return check

    @app.post("/v1/applicants", status_code=201)
    async def create_applicant(body: ApplicantIn) -> Applicant:
        """Register a customer for verification. One applicant per external
        customer id: a second one is refused with 409 naming the first."""
        existing = store.get(APPLICANT_BY_EXTERNAL_ID, body.external_customer_id)
        if existing is not None:
            raise HTTPException(
                status_code=409,
                detail=f"external_customer_id {body.external_customer_id} already has"
                f" applicant {existing['applicant_id']}",
            )
        applicant = Applicant(
            **body.model_dump(),
            id=f"app_{store.next_number(APPLICANTS):06d}",
            status="created",
            document_ids=[],
            check_ids=[],
            created_at=_now(),
        )
        save_applicant(applicant)
        store.put(
            APPLICANT_BY_EXTERNAL_ID, body.external_customer_id, {"applicant_id": applicant.id}
        )
        context.outbox.emit(NAME, "applicant.created", applicant.model_dump(mode="json"))
        return applicant

    @app.get("/v1/applicants/{applicant_id}")
    async def get_applicant(applicant_id: str) -> Applicant:
        """The applicant with its current status and its documents and checks, oldest first."""
        return load_applicant(applicant_id)

    @app.post("/v1/applicants/{applicant_id}/documents", status_code=201)
    async def add_document(applicant_id: str, body: DocumentIn) -> Document:
        """Record a document's metadata. Refused (409) once the applicant is
        rejected for good, or past DOCUMENTS_PER_APPLICANT_MAX."""
        return record_document(applicant_id, body)

    def record_document(applicant_id: str, body: DocumentIn) -> Document:
        applicant = load_applicant(applicant_id)
        if applicant.status == "rejected":
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} was rejected with reject_type FINAL;"
                " no more documents are accepted",
            )
        if len(applicant.document_ids) >= DOCUMENTS_PER_APPLICANT_MAX:
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} already has"
                f" {DOCUMENTS_PER_APPLICANT_MAX} documents, the most allowed",
            )
        document = Document(
            **body.model_dump(),
            id=f"doc_{store.next_number(DOCUMENTS):06d}",
            applicant_id=applicant_id,
            uploaded_at=_now(),
        )
        store.put(DOCUMENTS, document.id, document.model_dump(mode="json"))
        save_applicant(
            applicant.model_copy(update={"document_ids": [*applicant.document_ids, document.id]})
        )
        return document

    @app.post("/v1/applicants/{applicant_id}/checks", status_code=201)
    async def start_check(applicant_id: str) -> Check:
        """Start a check of everything the applicant has uploaded; it is
        pending until decided (by the simulate endpoint or the auto_result
        option, in which case it is returned decided). Needs an identity
        document; refused (409) while another check is open, once approved,
        or once rejected with FINAL."""
        return open_check(applicant_id)

    def open_check(applicant_id: str) -> Check:
        applicant = load_applicant(applicant_id)
        if applicant.status in OPEN_CHECK_STATUSES:
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} already has check"
                f" {applicant.check_ids[-1]} {applicant.status}",
            )
        if applicant.status == "approved":
            raise HTTPException(
                status_code=409, detail=f"applicant {applicant_id} is already approved"
            )
        if applicant.status == "rejected":
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} was rejected with reject_type FINAL;"
                " no new check can be started",
            )
        if len(applicant.check_ids) >= CHECKS_PER_APPLICANT_MAX:
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} already had"
                f" {CHECKS_PER_APPLICANT_MAX} checks, the most allowed",
            )
        types = {
            (store.get(DOCUMENTS, document_id) or {}).get("type")
            for document_id in applicant.document_ids
        }
        if not types & IDENTITY_DOCUMENT_TYPES:
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} has no identity document"
                " (passport, id_card or driving_licence) to check",
            )
        # Read before anything is written, so a bad option leaves no state behind.
        decision = auto_decision()
        check = Check(
            id=f"chk_{store.next_number(CHECKS):06d}",
            applicant_id=applicant_id,
            external_customer_id=applicant.external_customer_id,
            status="pending",
            result=None,
            reject_type=None,
            reject_labels=[],
            document_ids=list(applicant.document_ids),
            created_at=_now(),
            completed_at=None,
        )
        applicant = applicant.model_copy(
            update={"status": "pending", "check_ids": [*applicant.check_ids, check.id]}
        )
        save_check(check)
        save_applicant(applicant)
        context.outbox.emit(NAME, "check.pending", check.model_dump(mode="json"))
        if decision is not None:
            check = decide(applicant, check, decision)
        return check

    @app.get("/v1/checks/{check_id}")
    async def get_check(check_id: str) -> Check:
        """The check as it stands: pending, on hold, or completed with its result."""
        return load_check(check_id)

    @app.post("/v1/applicants/{applicant_id}/links", status_code=201)
    async def create_link(applicant_id: str, request: Request) -> VerificationLink:
        """A link to this provider's page where the person uploads their
        documents themselves; submitting there starts the check (check.pending
        follows). Valid LINK_SECONDS; refused (409) once the applicant is
        approved or rejected for good."""
        applicant = load_applicant(applicant_id)
        if applicant.status in ("approved", "rejected"):
            raise HTTPException(
                status_code=409, detail=f"applicant {applicant_id} is already {applicant.status}"
            )
        token = secrets.token_urlsafe(LINK_TOKEN_BYTES)
        expires_at = _now() + timedelta(seconds=LINK_SECONDS)
        store.put(
            LINKS, token, {"applicant_id": applicant_id, "expires_at": expires_at.isoformat()}
        )
        base = str(request.url).split("/v1/applicants/", 1)[0]
        return VerificationLink(
            url=f"{base}/verify/{token}", applicant_id=applicant_id, expires_at=expires_at
        )

    def applicant_of_link(token: str) -> Applicant:
        found = store.get(LINKS, token)
        if found is None or datetime.fromisoformat(found["expires_at"]) <= _now():
            raise HTTPException(status_code=404, detail="this link is unknown or expired")
        return load_applicant(found["applicant_id"])

    @app.get("/verify/{token}", response_class=HTMLResponse)
    async def verification_page(token: str) -> HTMLResponse:
        """The page the person opens: their name and an upload form."""
        applicant = applicant_of_link(token)
        name = html.escape(f"{applicant.first_name} {applicant.last_name}")
        options = "".join(
            f'<option value="{kind}">{kind.replace("_", " ")}</option>'
            for kind in sorted(IDENTITY_DOCUMENT_TYPES)
        )
        return HTMLResponse(
            "<!doctype html><title>Verify your identity</title>"
            f"<h1>Verify your identity, {name}</h1>"
            '<form method="post" enctype="multipart/form-data">'
            f'<label>Document <select name="type">{options}</select></label> '
            '<label>Issued by (3 letters) <input name="country" pattern="[A-Z]{3}" required>'
            '</label> <label>Photo <input type="file" name="file" required></label> '
            '<button type="submit">Submit</button></form>'
        )

    @app.post("/verify/{token}", response_class=HTMLResponse, status_code=201)
    async def verification_submitted(
        token: str,
        kind: Annotated[DocumentType, Form(alias="type")],
        file: UploadFile,
        country: Annotated[str | None, Form()] = None,
    ) -> HTMLResponse:
        """The person's upload: the document is recorded and the check starts
        (409 while one is open, as the API's). The photo itself is only
        measured: the simulator keeps no image."""
        applicant = applicant_of_link(token)
        if applicant.status in {*OPEN_CHECK_STATUSES, "approved", "rejected"}:
            raise HTTPException(
                status_code=409,
                detail=f"your documents were received already ({applicant.status})",
            )
        photo = await file.read(UPLOAD_BYTES_MAX + 1)
        if not photo or len(photo) > UPLOAD_BYTES_MAX:
            raise HTTPException(
                status_code=422, detail=f"file must be 1 byte to {UPLOAD_BYTES_MAX} bytes"
            )
        try:
            document = DocumentIn(type=kind, country=country, file_name=file.filename or "photo")
        except ValidationError as error:
            raise HTTPException(
                status_code=422, detail=error.errors(include_input=False, include_context=False)
            ) from None
        record_document(applicant.id, document)
        check = open_check(applicant.id)
        return HTMLResponse(
            "<!doctype html><title>Thank you</title>"
            f"<h1>Thank you</h1><p>Your documents are being checked ({check.id}).</p>",
            status_code=201,
        )

    @app.post("/v1/simulate/applicants/{applicant_id}/decide")
    async def simulate_decide(applicant_id: str, body: DecisionIn) -> Check:
        """Sandbox only: decide the applicant's open check as a reviewer would.
        ON_HOLD parks a pending check for manual review; GREEN or RED then
        completes it. 409 when no check is open or it is already on hold."""
        applicant = load_applicant(applicant_id)
        if applicant.status not in OPEN_CHECK_STATUSES:
            raise HTTPException(
                status_code=409,
                detail=f"applicant {applicant_id} has no check awaiting a decision"
                f" (status {applicant.status})",
            )
        return decide(applicant, load_check(applicant.check_ids[-1]), body)

    return app
