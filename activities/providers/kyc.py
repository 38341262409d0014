"""Client of the KYC provider's applicant, document and check API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from activities.providers.http import ProviderClient
from schemas.kyc import (
    KycApplicant,
    KycCheck,
    KycDecision,
    KycDocument,
    KycDocumentType,
    KycLink,
    KycRejectType,
)
from schemas.providers import KYC


class KycClient(ProviderClient):
    provider = KYC

    async def create_applicant(
        self,
        *,
        external_customer_id: str,
        first_name: str,
        last_name: str,
        date_of_birth: date,
        country: str,
        idempotency_key: str,
    ) -> KycApplicant:
        """Register a customer for verification (country: ISO 3166-1 alpha-3).
        A second applicant for the same customer is a ProviderConflict."""
        return await self.call(
            "POST",
            "/v1/applicants",
            KycApplicant,
            json={
                "external_customer_id": external_customer_id,
                "first_name": first_name,
                "last_name": last_name,
                "date_of_birth": date_of_birth.isoformat(),
                "country": country,
            },
            idempotency_key=idempotency_key,
        )

    async def get_applicant(self, applicant_id: str) -> KycApplicant:
        return await self.call("GET", f"/v1/applicants/{applicant_id}", KycApplicant)

    async def add_document(
        self,
        applicant_id: str,
        *,
        document_type: KycDocumentType,
        country: str | None,
        file_name: str,
        idempotency_key: str,
    ) -> KycDocument:
        """Record an uploaded document; identity documents need their issuing country."""
        return await self.call(
            "POST",
            f"/v1/applicants/{applicant_id}/documents",
            KycDocument,
            json={"type": document_type.value, "country": country, "file_name": file_name},
            idempotency_key=idempotency_key,
        )

    async def start_check(self, applicant_id: str, *, idempotency_key: str) -> KycCheck:
        """Start a check; its result arrives by webhook. A ProviderConflict when
        a check is already open or the applicant was approved or finally rejected."""
        return await self.call(
            "POST",
            f"/v1/applicants/{applicant_id}/checks",
            KycCheck,
            idempotency_key=idempotency_key,
        )

    async def create_link(self, applicant_id: str, *, idempotency_key: str) -> KycLink:
        """A link to the provider's page where the person uploads documents
        themselves; their upload starts a check (check.pending follows)."""
        return await self.call(
            "POST",
            f"/v1/applicants/{applicant_id}/links",
            KycLink,
            idempotency_key=idempotency_key,
        )

    async def get_check(self, check_id: str) -> KycCheck:
        return await self.call("GET", f"/v1/checks/{check_id}", KycCheck)

    async def simulate_decision(
        self,
        applicant_id: str,
        *,
        result: KycDecision,
        reject_type: KycRejectType | None = None,
        labels: Sequence[str] = (),
        idempotency_key: str,
    ) -> KycCheck:
        """Sandbox only: decide the applicant's open check as a reviewer would."""
        return await self.call(
            "POST",
            f"/v1/simulate/applicants/{applicant_id}/decide",
            KycCheck,
            json={
                "result": result.value,
                "reject_type": reject_type.value if reject_type is not None else None,
                "labels": list(labels),
            },
            idempotency_key=idempotency_key,
        )
