"""The card's real-time authorizations (workflows/card_money.py): the
gateway sends the issuer's question as the `authorize` update; the card
decides from its state, spending limits, velocity and (through the hold
itself) the wallet's available balance, places the hold in the ledger as a
local activity (latency), and answers approve or decline with a reason code.
A question asked again gets the answer it got; one the card already followed
the issuer's own answer to gets that answer. Deterministic: for use inside
the workflow only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.auth_rules import Approval, keep_approvals
    from schemas.card_rules import (
        authorized_total,
        card_rules,
        count,
        partial_approval,
        refusal,
        rules_verdict,
    )
    from schemas.cards import (
        APPROVED,
        PARTIALLY_APPROVED,
        AuthorizationAnswer,
        AuthorizationRecord,
        AuthorizationRequest,
        DecisionRecord,
        DeclineReason,
        HeldPart,
    )
    from workflows.cancellation import is_cancellation
    from workflows.card_ledger import (
        CARD_FINISHED_BEFORE_DECIDED_PATCH,
        LEDGER_REFUSALS,
        CardLedger,
    )
    from workflows.steps import step_key

# With it, a card holding its policy's open_authorizations_max declines the
# next purchase; before, it approved one more than the maximum.
CARD_OPEN_AUTHORIZATIONS_MAX_PATCH = "card-open-authorizations-at-most-max"


class CardAuthorizations(CardLedger):
    """The card's decisions on the issuer's authorization requests."""

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationAnswer:
        state = self.state
        record = state.authorizations.get(request.authorization_id)
        if (
            record is None
            and self.durable
            and request.authorization_id in state.finished_authorizations
            and workflow.patched(CARD_FINISHED_BEFORE_DECIDED_PATCH)
        ):
            # The issuer ended it before this question reached the card.
            return _decline(DeclineReason.AUTHORIZATION_FINISHED)
        if record is not None and request.request_id is not None and self.durable:
            # The same request again, past what Temporal dedupes (another run):
            # the answer it got.
            answered = next(
                (d for d in record.decisions if d.request_id == request.request_id), None
            )
            if answered is not None:
                return _answer(answered)
        if request.kind == "initial" and record is not None:
            # The same question again (a retried request): the first answer.
            first = record
            await workflow.wait_condition(
                lambda: (
                    bool(first.decisions)
                    or state.authorizations.get(first.authorization_id) is not first
                )
            )
            if not first.decisions:
                # The first ask failed outright and left nothing: decide afresh.
                return await self.authorize(request)
            return _answer(first.decisions[0])
        if request.kind == "incremental":
            if record is None:
                return _decline(DeclineReason.UNKNOWN_AUTHORIZATION)
            followed = _claim_followed(record, request) or self._claim_stood_in(record, request)
            if followed is not None:
                return _answer(followed)
        now = workflow.now()
        # The hold's expiry is part of its idempotent payload: from the
        # issuer's time of asking, never this workflow task's clock.
        asked_at = (
            request.requested_at if self.durable and request.requested_at is not None else now
        )
        if record is None:
            record = AuthorizationRecord(
                authorization_id=request.authorization_id,
                merchant=request.merchant,
                merchant_amount_minor=request.merchant_amount_minor,
                merchant_currency=request.merchant_currency,
                created_at=asked_at,
                expires_at=asked_at + timedelta(seconds=state.policy.hold_expiry_seconds),
            )
            state.authorizations[request.authorization_id] = record
        index = record.next_decision
        record.next_decision += 1
        reason = refusal(
            state,
            request,
            record.authorized_minor,
            self._open_count(),
            now,
            lambda: workflow.patched(CARD_OPEN_AUTHORIZATIONS_MAX_PATCH),
        )
        if reason is not None:
            return self._decide(record, index, request, 0, reason.value)
        rules, source = card_rules(state, now)
        verdict = rules_verdict(rules, state, request, asked_at) if rules else None
        if verdict is not None:
            count_rules(verdict.shadow_hits, verdict.declined_by)
            if verdict.declined_by is not None:
                return self._decide(
                    record,
                    index,
                    request,
                    0,
                    DeclineReason.DECLINED_BY_RULE.value,
                    rule_id=verdict.declined_by,
                    shadow_rules=verdict.shadow_hits,
                    rules_version=source,
                )
        # Counted before the hold is awaited, so concurrent requests on this
        # card see each other and never pass a limit together.
        mcc = request.merchant.mcc
        purchase = 1 if request.kind == "initial" else 0
        count(state, now, request.amount_minor, mcc=mcc, purchases=purchase)
        async with self.lock:
            raced = next((d for d in record.decisions if d.index == index), None)
            if raced is not None:
                # The issuer's webhook about this very question got the lock
                # first: the card already follows the issuer's answer.
                count(state, now, -request.amount_minor, mcc=mcc, purchases=-purchase)
                return _answer(raced)
            key = step_key(f"auth/{record.authorization_id}/d{index}")
            try:
                await self._open_accounts()
                held = await self._hold_in_tier(
                    key,
                    request.amount_minor,
                    record.expires_at,
                    asked_at,
                    authorized_minor=record.authorized_minor,
                )
            except LEDGER_REFUSALS as error:
                if not self.durable or is_cancellation(error):
                    raise
                # Refused outright (no answer was given): give back what this
                # ask counted, and leave no empty record for a later ask to wait on.
                count(state, now, -request.amount_minor, mcc=mcc, purchases=-purchase)
                if record.next_decision == index + 1:
                    record.next_decision = index
                if not record.decisions and not record.held:
                    state.authorizations.pop(record.authorization_id, None)
                raise
            if isinstance(held, DeclineReason):
                # The customer's KYC tier refused it before the ledger.
                count(state, now, -request.amount_minor, mcc=mcc, purchases=-purchase)
                return self._decide(record, index, request, 0, held.value)
            approved, why = request.amount_minor, APPROVED
            if not held.accepted:
                approved, why = 0, DeclineReason.INSUFFICIENT_FUNDS.value
                if request.partial_approval_capable:
                    # A durable read under the patch: the partial hold's amount
                    # must be the same when a crashed task runs again.
                    available = await (
                        self._available_durably() if self.durable else self._available()
                    )
                    partial_minor = partial_approval(request.amount_minor, available)
                    if partial_minor:
                        partial = await self._hold_in_tier(
                            f"{key}-partial",
                            partial_minor,
                            record.expires_at,
                            asked_at,
                            authorized_minor=record.authorized_minor,
                        )
                        if not isinstance(partial, DeclineReason) and partial.accepted:
                            approved, why = partial_minor, PARTIALLY_APPROVED
                            key = partial.key
            count(
                state,
                now,
                approved - request.amount_minor,
                mcc=mcc,
                purchases=0 if approved else -purchase,
            )
            if approved:
                record.held.append(HeldPart(key=key, amount_minor=approved, decision=index))
                state.purchases_approved += purchase
                if state.locked_merchant is None:
                    # A `first` merchant lock locks the card to this merchant.
                    state.locked_merchant = request.merchant.name
                state.rule_approvals = keep_approvals(
                    [*state.rule_approvals, Approval(at=asked_at, amount_minor=approved)],
                    asked_at,
                )
            return self._decide(
                record,
                index,
                request,
                approved,
                why,
                shadow_rules=verdict.shadow_hits if verdict else [],
                rules_version=source,
            )

    def _claim_stood_in(
        self, record: AuthorizationRecord, request: AuthorizationRequest
    ) -> DecisionRecord | None:
        """A question the gateway answered with its stand-in (the issuer
        records it as cardflow's), asked of the card after the issuer's
        webhook of that answer was applied: that answer stands, once."""
        for decision in record.decisions:
            if (
                decision.decided_by == "cardflow"
                and decision.request_id is None
                and _followed_answer_to(decision, request)
                and self.durable
                and workflow.patched(CARD_FINISHED_BEFORE_DECIDED_PATCH)
            ):
                decision.request_id = request.request_id or f"claimed-{decision.index}"
                return decision
        return None

    def _decide(
        self,
        record: AuthorizationRecord,
        index: int,
        request: AuthorizationRequest,
        approved_minor: int,
        reason: str,
        *,
        rule_id: str | None = None,
        shadow_rules: list[str] | None = None,
        rules_version: str | None = None,
    ) -> AuthorizationAnswer:
        decision = DecisionRecord(
            index=index,
            kind=request.kind,
            requested_minor=request.amount_minor,
            approved_minor=approved_minor,
            reason=reason,
            request_id=request.request_id,
            rule_id=rule_id,
            shadow_rules=shadow_rules or [],
            rules_version=rules_version,
            segment=self.state.customer_tier,
        )
        record.decisions.append(decision)
        record.decisions.sort(key=lambda d: d.index)
        record.authorized_minor = authorized_total(record.decisions)
        if not record.held and request.kind == "initial":
            # Declined, nothing held: nothing to keep. Should the issuer have
            # approved it after all (its stand-in), its webhook brings it back.
            self.state.authorizations.pop(record.authorization_id, None)
        return _answer(decision)

    def _open_count(self) -> int:
        return sum(1 for r in self.state.authorizations.values() if r.held)


def _answer(decision: DecisionRecord) -> AuthorizationAnswer:
    return AuthorizationAnswer(
        decision="approve" if decision.approved_minor > 0 else "decline",
        approved_amount_minor=decision.approved_minor,
        reason=decision.reason,
        rule_id=decision.rule_id,
        shadow_rules=decision.shadow_rules,
        rules_version=decision.rules_version,
        segment=decision.segment,
    )


def count_rules(shadow_hits: list[str], declined_by: str | None) -> None:
    """Metrics (never emitted while replaying): what each shadow rule would
    have declined, and each active rule's declines."""
    meter = workflow.metric_meter()
    if shadow_hits:
        shadow = meter.create_counter(
            "cardflow_rule_shadow_declines", "Authorizations a shadow rule would have declined"
        )
        for rule in shadow_hits:
            shadow.add(1, {"rule": rule})
    if declined_by is not None:
        meter.create_counter(
            "cardflow_rule_declines", "Authorizations an active rule declined"
        ).add(1, {"rule": declined_by})


def _decline(reason: DeclineReason) -> AuthorizationAnswer:
    return AuthorizationAnswer(decision="decline", approved_amount_minor=0, reason=reason.value)


def _claim_followed(
    record: AuthorizationRecord, request: AuthorizationRequest
) -> DecisionRecord | None:
    """A question the card is asked after it already followed the issuer's
    own answer to it (the webhook came first): that answer stands."""
    for decision in record.decisions:
        if decision.decided_by != "cardflow" and _followed_answer_to(decision, request):
            decision.decided_by = "cardflow"  # claimed: a second copy decides afresh
            return decision
    return None


def _followed_answer_to(decision: DecisionRecord, request: AuthorizationRequest) -> bool:
    """The issuer's own answer the card followed, to this very question."""
    return (
        decision.kind == request.kind
        and decision.requested_minor == request.amount_minor
        and decision.reason.startswith("followed the issuer")
    )
