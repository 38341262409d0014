"""Onboarding `onboarding/{customer_id}`: wallets, KYC, the verdict, and cleanup.

Steps: save the profile; open the customer's wallets (idempotent by code);
create the KYC applicant; upload documents and start a check; wait for the
provider's verdict (signal `kyc_result`, from the gateway). GREEN approves.
RED with RETRY asks the customer to resubmit (signal `resubmit_documents`)
and checks again, up to the policy's attempts. An application without
documents sends the customer a link to the provider's own upload page
instead; their upload there starts the check (its `check.pending` names it),
and a RETRY sends a new link. RED with FINAL rejects. On
hold waits for an operator's `review` update. A wait that outlives its
policy expires the onboarding. Rejection and expiry close the wallets; a
failure after they were opened closes them too (compensation), and so does a
cancellation, which ends the onboarding `cancelled`. A wallet whose opening
the cancellation interrupted may open all the same: it is opened again with
the same spec (a no-op if it opened) and closed with the others.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.customers import CustomerActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from schemas import accounts
    from schemas.customers import KycStatus, KycStatusChange, Notification
    from schemas.ledger import AccountSpec
    from schemas.onboarding import (
        ApplicantRequest,
        CheckRequest,
        DocumentSpec,
        DocumentUpload,
        KycResult,
        KycReview,
        LinkRequest,
        OnboardingInput,
        OnboardingOutcome,
        OnboardingResult,
        OnboardingStatus,
        Resubmission,
    )
    from schemas.providers import KYC
    from schemas.refusals import Refusal, refused
    from schemas.search import CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished, ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for

ONBOARDING_WORKFLOW = "Onboarding"
KYC_RESULT_SIGNAL = "kyc_result"
RESUBMIT_SIGNAL = "resubmit_documents"
REVIEW_UPDATE = "review"
# A wallet whose opening a cancellation interrupted is closed too (opened
# again first, to know it exists); runs recorded before it left it open.
INTERRUPTED_WALLET_PATCH = "onboarding-interrupted-wallet-closed"
CUSTOMERS_RETRY_POLICY = RetryPolicy(
    maximum_interval=timedelta(seconds=10), non_retryable_error_types=["CustomerNotFound"]
)


def onboarding_workflow_id(customer_id: str) -> str:
    return f"onboarding/{customer_id}"


def onboarding_start_metadata(request: OnboardingInput) -> StartMetadata:
    customer_id = request.profile.customer_id
    return start_metadata(
        f"Onboarding of customer {customer_id}",
        {"customer": customer_id, "documents": len(request.documents)},
        "the KYC provider's verdict (signal `kyc_result`, from the gateway); an operator's"
        " `review` update when the check is on hold; resubmitted documents after a RETRY",
    )


def wallet_code(customer_id: str, currency: str) -> str:
    return accounts.wallet(customer_id, currency)


@workflow.defn(name=ONBOARDING_WORKFLOW)
class Onboarding:
    def __init__(self) -> None:
        self._input: OnboardingInput | None = None
        self.progress = ProcessStage("starting", self._details)
        self._outcome: OnboardingOutcome | None = None
        self._applicant_id: str | None = None
        self._attempts = 0
        self._wallets: list[str] = []
        # Closes the wallets opened so far, newest first.
        self._saga = Saga()
        self._current_check: str | None = None
        self._results: dict[str, KycResult] = {}
        self._review: KycReview | None = None
        self._resubmission: Resubmission | None = None
        # Checks this onboarding has had a verdict on; an upload at the
        # provider's page starts a check not among them.
        self._checks_done: list[str] = []
        self._verification_url: str | None = None

    # ----- platform: outcome, compensation -------------------------------

    @workflow.run
    async def run(self, request: OnboardingInput) -> OnboardingResult:
        self._input = request
        customer_id = request.profile.customer_id
        # Attributes added to an upsert the workflow already issues here keep
        # its commands as they were: histories of older runs still replay.
        self.progress.search(CUSTOMER_ID.value_set(customer_id), PROVIDER.value_set(KYC))
        try:
            await self._onboard(request)
            raise AssertionError("onboarding ended without an outcome")
        except Finished as finished:
            outcome: OnboardingOutcome = finished.outcome
            reason = finished.reason
        # Failures and cancellation, but not the SDK's eviction of a cached
        # workflow, which must never run compensations.
        except (Exception, asyncio.CancelledError) as error:
            # A step failed for good (or the workflow was cancelled): close what
            # was opened, to the end even if a cancellation comes meanwhile.
            await self._saga.compensate()
            self.progress.enter("cancelled" if is_cancellation(error) else "failed")
            raise
        if outcome != "approved":
            await self._saga.compensate()
        await step(
            request,
            CustomerActivities.set_kyc_status,
            KycStatusChange(customer_id=customer_id, status=KycStatus(outcome)),
            retry_policy=CUSTOMERS_RETRY_POLICY,
        )
        await self._notify(f"outcome-{outcome}", *_MESSAGES[outcome])
        self._outcome = outcome
        self.progress.enter(outcome)
        return OnboardingResult(
            customer_id=customer_id,
            outcome=outcome,
            reason=reason,
            applicant_id=self._applicant_id,
            wallets=self._wallets,
            attempts=self._attempts,
        )

    # ----- business steps -------------------------------------------------

    async def _onboard(self, request: OnboardingInput) -> None:
        profile = request.profile
        policy = request.policy
        self.progress.enter("opening wallets")
        await step(
            request, CustomerActivities.save_profile, profile, retry_policy=CUSTOMERS_RETRY_POLICY
        )
        for currency in policy.wallet_currencies:
            code = wallet_code(profile.customer_id, currency.value)
            spec = AccountSpec(
                code=code,
                currency=currency,
                kind="wallet",
                owner_id=profile.customer_id,
                debits_must_not_exceed_credits=True,
            )
            try:
                await step(request, LedgerActivities.open_account, spec)
            except ActivityError as error:
                if is_cancellation(error) and workflow.patched(INTERRUPTED_WALLET_PATCH):
                    # The opening may still go through: learn it, then close it.
                    self._saga.done(functools.partial(self._close_interrupted_wallet, spec))
                raise
            self._wallets.append(code)
            self._saga.done(functools.partial(self._close_wallet, code))

        self.progress.enter("creating the KYC applicant")
        applicant = await step(
            request,
            ProviderActivities.create_applicant,
            ApplicantRequest(key=step_key("applicant"), profile=profile),
        )
        self._applicant_id = applicant.id

        documents = request.documents
        # No documents: the customer uploads them at the provider's page.
        hosted = not documents
        while True:
            self._attempts += 1
            if hosted:
                await self._hosted_check(request)
            else:
                await self._check(request, documents)
            result = await self._wait_for_verdict(policy.kyc_result_wait_seconds)
            if result.status == "on_hold":
                await self._wait_for_review(policy.review_wait_seconds)
                continue  # unreachable: a review always finishes
            if result.result == "GREEN":
                raise Finished("approved", "KYC check passed")
            if result.reject_type == "FINAL":
                raise Finished("rejected", "KYC rejected: " + ", ".join(result.reject_labels))
            if self._attempts >= policy.kyc_attempts_max:
                raise Finished("rejected", f"KYC failed {self._attempts} times")
            if hosted:
                continue  # a new link, and the customer's new upload
            documents = await self._wait_for_resubmission(policy.resubmission_wait_seconds)

    async def _check(self, request: OnboardingInput, documents: list[DocumentSpec]) -> None:
        assert self._applicant_id is not None
        self.progress.enter(f"KYC check {self._attempts}: uploading documents")
        for index, document in enumerate(documents):
            await step(
                request,
                ProviderActivities.add_document,
                DocumentUpload(
                    key=step_key(f"document/{self._attempts}/{index}"),
                    applicant_id=self._applicant_id,
                    document=document,
                ),
            )
        check = await step(
            request,
            ProviderActivities.start_check,
            CheckRequest(key=step_key(f"check/{self._attempts}"), applicant_id=self._applicant_id),
        )
        self._current_check = check.id

    async def _hosted_check(self, request: OnboardingInput) -> None:
        """Send the customer the provider's upload page; their upload there
        starts the check, which the provider's check.pending names."""
        assert self._applicant_id is not None
        self.progress.enter(f"KYC check {self._attempts}: sending the upload link")
        link = await step(
            request,
            ProviderActivities.verification_link,
            LinkRequest(key=step_key(f"link/{self._attempts}"), applicant_id=self._applicant_id),
        )
        self._verification_url = link.url
        again = self._attempts > 1
        await self._notify(
            f"verify-{self._attempts}",
            "Please upload your documents again" if again else "Verify your identity",
            ("We could not verify your documents. " if again else "")
            + f"Open {link.url} and photograph your passport, ID card or driving licence.",
        )
        self.progress.enter("waiting for the customer's documents")
        wait_seconds = request.policy.resubmission_wait_seconds
        if not await wait_for(lambda: self._new_check() is not None, wait_seconds):
            raise Finished("expired", f"no documents uploaded within {wait_seconds}s")
        self._current_check = self._new_check()

    def _new_check(self) -> str | None:
        """The first check the provider told of that has had no verdict here."""
        return next((check for check in self._results if check not in self._checks_done), None)

    async def _wait_for_verdict(self, wait_seconds: int) -> KycResult:
        check_id = self._current_check
        self.progress.enter("waiting for the KYC result")
        if not await wait_for(lambda: self._decided(check_id), wait_seconds):
            raise Finished("expired", f"no KYC result within {wait_seconds}s")
        assert check_id is not None
        self._checks_done.append(check_id)
        return self._results[check_id]

    async def _wait_for_review(self, wait_seconds: int) -> None:
        check_id = self._current_check
        assert check_id is not None
        self.progress.enter("in operator review")
        await self._notify(
            "in-review",
            "We are reviewing your application",
            "A specialist is looking at your documents; we will be in touch.",
        )
        reviewed = await wait_for(
            lambda: self._review is not None or self._results[check_id].status == "completed",
            wait_seconds,
        )
        if not reviewed:
            raise Finished("expired", f"no review within {wait_seconds}s")
        if self._review is not None:
            review = self._review
            outcome: OnboardingOutcome = "approved" if review.decision == "approve" else "rejected"
            raise Finished(outcome, f"operator {review.operator}: {review.reason}")
        result = self._results[check_id]
        if result.result == "GREEN":
            raise Finished("approved", "KYC check passed after review")
        raise Finished("rejected", "KYC rejected after review")

    async def _wait_for_resubmission(self, wait_seconds: int) -> list[DocumentSpec]:
        self.progress.enter("waiting for resubmitted documents")
        await self._notify(
            f"resubmit-{self._attempts}",
            "Please resubmit your documents",
            "We could not verify your documents; please upload them again.",
        )
        if not await wait_for(lambda: self._resubmission is not None, wait_seconds):
            raise Finished("expired", f"no resubmission within {wait_seconds}s")
        assert self._resubmission is not None
        documents = self._resubmission.documents
        self._resubmission = None
        return documents

    # ----- compensations --------------------------------------------------

    async def _close_wallet(self, code: str) -> None:
        request = self._input
        assert request is not None
        await step(request, LedgerActivities.close_account, code)

    async def _close_interrupted_wallet(self, spec: AccountSpec) -> None:
        """Open the wallet again with the same spec (a no-op if the interrupted
        opening went through), so it surely exists, and close it."""
        request = self._input
        assert request is not None
        await step(request, LedgerActivities.open_account, spec)
        self._wallets.append(spec.code)
        await self._close_wallet(spec.code)

    # ----- messages -------------------------------------------------------

    @workflow.signal(name=KYC_RESULT_SIGNAL)
    def kyc_result(self, result: KycResult) -> None:
        # Webhooks repeat and reorder: a completed verdict is never replaced
        # by an older on-hold or pending one.
        known = self._results.get(result.check_id)
        if known is None or known.status != "completed":
            self._results[result.check_id] = result

    @workflow.signal(name=RESUBMIT_SIGNAL)
    def resubmit_documents(self, resubmission: Resubmission) -> None:
        if self.progress.stage == "waiting for resubmitted documents":
            self._resubmission = resubmission

    @workflow.update(name=REVIEW_UPDATE)
    async def review(self, review: KycReview) -> str:
        """An operator's decision (the Web UI's update form sends it as JSON; a
        malformed one is refused naming its fields before the validator runs)."""
        self._review = review
        return f"{self._review.decision} recorded"

    @review.validator
    def _validate_review(self, review: KycReview) -> None:
        stage = self.progress.stage
        if self._outcome is not None or stage in ("approved", "rejected", "expired", "failed"):
            raise refused(Refusal.FINISHED, f"onboarding already finished ({stage})")
        if stage != "in operator review":
            raise refused(Refusal.WRONG_STATE, f"no review is pending (stage: {stage})")
        if self._review is not None:
            raise refused(Refusal.ALREADY_DONE, "this application was already reviewed")

    @workflow.query
    def status(self) -> OnboardingStatus:
        customer_id = self._input.profile.customer_id if self._input else ""
        last = self._results.get(self._current_check or "")
        return OnboardingStatus(
            customer_id=customer_id,
            stage=self.progress.stage,
            outcome=self._outcome,
            applicant_id=self._applicant_id,
            attempts=self._attempts,
            wallets=self._wallets,
            last_check=last,
            verification_url=self._verification_url,
        )

    # ----- helpers --------------------------------------------------------

    def _decided(self, check_id: str | None) -> bool:
        result = self._results.get(check_id or "")
        return result is not None and result.status in ("completed", "on_hold")

    def _details(self) -> str:
        return f"Onboarding: {self.progress.stage}"

    async def _notify(self, occasion: str, subject: str, body: str) -> None:
        request = self._input
        assert request is not None
        await step(
            request,
            ProviderActivities.notify_customer,
            Notification(
                key=step_key(f"notify/{occasion}"),
                customer_id=request.profile.customer_id,
                subject=subject,
                body=body,
            ),
        )


_MESSAGES: dict[str, tuple[str, str]] = {
    "approved": ("Welcome to cardflow", "Your identity is verified and your wallets are open."),
    "rejected": (
        "Your application was declined",
        "We could not verify your identity, so we cannot open an account.",
    ),
    "expired": (
        "Your application expired",
        "We did not hear back in time; you are welcome to apply again.",
    ),
}
