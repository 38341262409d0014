"""The card's money, inside its entity workflow `card/{card_id}`.

Real-time authorizations: the gateway sends the issuer's question as the
`authorize` update; the card decides from its state, spending limits,
velocity and (through the hold itself) the wallet's available balance, places
the hold in the ledger as a local activity (latency), and answers approve or
decline with a reason code.

Then the issuer's webhooks, as `network_event` signals, applied one at a time:
- an authorization's snapshot (created, declined, incremented, advice,
  expired) is compared with the card's own decisions: when the issuer did
  something else (its stand-in decision because the answer came too late, a
  merchant that could not take a partial approval), the holds follow the
  issuer, so the ledger matches what the issuer did;
- a clearing posts from the holds (lower: the rest stays held, or is released
  when final; higher: the excess within the tolerance as an extra transfer,
  beyond it an operator exception); several may follow one authorization;
- a reversal releases all or part of the holds; a force post debits the
  wallet without an authorization; a refund credits it;
- a hold not cleared within the policy is voided by a workflow timer.

Correct under disorder (behind CARD_MONEY_PATCH; cards started before it
keep their counter-named keys until they continue as new):
- every idempotent payload is a function of durable inputs: a hold's expiry
  derives from the issuer's own time of asking (or of its authorization),
  never from the clock of the workflow task that places it, so a task retried
  after a crash submits the very same hold;
- every ledger key of an issuer event derives from the issuer's ids (the
  authorization, its decision or history entry, the transaction, the
  reversal), and a transaction or reversal is claimed by its id in the
  database before it moves money, so applying an event twice is harmless
  whatever the card remembers;
- finished stays finished: a late snapshot of a cleared, reversed or expired
  authorization, or one older than what the card already took in, is ignored;
- a ledger conflict never fails the card: it becomes an exception for an
  operator and the card runs on.
The wallet never goes below zero: what the issuer settled that the wallet
cannot cover becomes an exception for an operator.
Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.card_transactions import (
        CardEventClaim,
        CardTransactionActivities,
        CardTransactionRecord,
    )
    from activities.ledger.activities import LEDGER_RETRY_POLICY, LedgerActivities
    from schemas import accounts
    from schemas.card_rules import (
        authorized_total,
        count,
        excess_within_tolerance,
        partial_approval,
        refusal,
    )
    from schemas.cards import (
        APPROVED,
        PARTIALLY_APPROVED,
        AuthorizationAnswer,
        AuthorizationRecord,
        AuthorizationRequest,
        CardException,
        CardInput,
        CardNetworkEvent,
        DecisionRecord,
        DeclineReason,
        ExceptionDecision,
        HeldPart,
        Merchant,
    )
    from schemas.cashback import CashbackInput, CashbackRefund
    from schemas.issuer import Authorization as IssuerAuthorization
    from schemas.issuer import (
        AuthorizationStatus,
        DecidedBy,
        DecisionOutcome,
        TransactionType,
    )
    from schemas.issuer import Reversal as IssuerReversal
    from schemas.issuer import Transaction as IssuerTransaction
    from schemas.ledger import (
        HoldRequest,
        HoldResolution,
        TransferOutcome,
        TransferRequest,
    )
    from workflows.cancellation import is_cancellation
    from workflows.cashback import (
        Cashback,
        cashback_start_metadata,
        cashback_workflow_id,
    )
    from workflows.steps import step, step_key

# The ledger's own expiry of a hold sits this far past the card's timer, so a
# clearing that races the timer still finds the hold; the timer voids it.
HOLD_LEDGER_GRACE = timedelta(hours=1)
# A local activity runs inside the workflow task; past this it is retried.
LOCAL_LEDGER_TIMEOUT = timedelta(seconds=5)
# Issuer events remembered by id: a fast path; older repeats of money events
# are stopped by their claims, of snapshots by the finished list and versions.
SEEN_EVENTS_MAX = 500
# Finished authorizations remembered, so a late snapshot never reopens one.
FINISHED_AUTHORIZATIONS_MAX = 2_000
# Ledger keys are at most 200 characters; a key derived from a long chain of
# partial postings is shortened to a digest of its full name past this.
DERIVED_KEY_CHARS_MAX = 190
# A hold named inside a posting's key: enough of a digest to tell one
# authorization's holds apart.
HOLD_DIGEST_CHARS = 16
# How the ledger's refusal of a call reaches the card: an activity's as an
# ActivityError, a local activity's (a hold) as its ApplicationError.
LEDGER_REFUSALS = (ActivityError, ApplicationError)
# Cards live for years: this change of how the card names its ledger keys,
# dates its holds and applies issuer events is behind a patch, so a card
# running the old code keeps its keys until its run continues as new.
CARD_MONEY_PATCH = "card-money-durable-keys"
# A decision the issuer took back (its stand-in declined what the card
# approved late) gives back its amount even when an older reversal, applied
# after the card's late hold, already gave back that decision's own hold:
# what is held is a total, whichever hold carries it.
CARD_RELEASE_ACROSS_HOLDS_PATCH = "card-release-across-holds"
# With it, the issuer's final word on an authorization the card never decided
# (the gateway's stand-in decline while the card's worker was away) finishes
# it, and a decision asked afterwards (the delayed update) is declined; an
# increment the gateway stood in for, asked after the issuer's webhook of it,
# gets that answer. Both once held what the issuer had declined, and nothing
# released it.
CARD_FINISHED_BEFORE_DECIDED_PATCH = "card-finished-before-decided"
# With it, a decision the card takes from the issuer because it never
# answered it (the issuer's stand-in, the gateway's, or its final word on an
# authorization the card has no record of) voids the card's own hold for that
# decision, should one be in the ledger: held by a workflow task that was lost
# (its worker killed) whose question never came back before the issuer's word.
CARD_LOST_HOLDS_PATCH = "card-lost-holds-released"
# With it, a card holding its policy's open_authorizations_max declines the
# next purchase; before, it approved one more than the maximum.
CARD_OPEN_AUTHORIZATIONS_MAX_PATCH = "card-open-authorizations-at-most-max"


class CardMoney:
    def __init__(self, state: CardInput) -> None:
        self.state = state
        # Holds change one operation at a time: an authorization's hold, a
        # clearing's posting and a reversal's release never interleave.
        self.lock = asyncio.Lock()
        self._accounts_open = False

    # ----- accounts and ledger calls ----------------------------------------

    @property
    def wallet(self) -> str:
        return accounts.wallet(self.state.customer_id, self.state.currency)

    @property
    def settlement(self) -> str:
        return accounts.issuer_settlement(self.state.currency)

    async def _open_accounts(self) -> None:
        if self._accounts_open:
            return
        await step(
            self.state,
            LedgerActivities.open_accounts,
            [
                accounts.system_account(self.settlement),
                accounts.system_account(accounts.suspense_reconciliation(self.state.currency)),
            ],
        )
        self._accounts_open = True

    async def _hold(self, key: str, amount_minor: int, expires_at: datetime) -> TransferOutcome:
        # A local activity: the issuer waits for the answer (latency).
        return await workflow.execute_local_activity_method(
            LedgerActivities.hold,
            HoldRequest(
                key=key,
                debit=self.wallet,
                credit=self.settlement,
                amount_minor=amount_minor,
                currency=self.state.currency,
                expires_at=expires_at + HOLD_LEDGER_GRACE,
            ),
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )

    async def _available(self) -> int:
        balance = await workflow.execute_local_activity_method(
            LedgerActivities.balance,
            self.wallet,
            start_to_close_timeout=LOCAL_LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY_POLICY,
        )
        return max(balance.available, 0)

    async def _available_durably(self) -> int:
        """The wallet's available balance, read by an activity whose result is
        in the history before anything depends on it."""
        balance = await step(self.state, LedgerActivities.balance, self.wallet)
        return max(balance.available, 0)

    async def _resolve(self, resolution: HoldResolution) -> TransferOutcome:
        return await step(self.state, LedgerActivities.resolve_hold, resolution)

    async def _transfer(self, key: str, debit: str, credit: str, amount: int) -> TransferOutcome:
        return await step(
            self.state,
            LedgerActivities.transfer,
            TransferRequest(
                key=key,
                debit=debit,
                credit=credit,
                amount_minor=amount,
                currency=self.state.currency,
            ),
        )

    @property
    def durable(self) -> bool:
        """Whether this run names its keys and dates its holds from durable
        inputs only (CARD_MONEY_PATCH). The SDK memoizes it for the run."""
        return workflow.patched(CARD_MONEY_PATCH)

    def _key(self, record: AuthorizationRecord, what: str) -> str:
        """A key named by a counter in the card's state (runs before the patch)."""
        record.keys_used += 1
        return step_key(f"auth/{record.authorization_id}/{record.keys_used}-{what}")

    def _part_key(self, record: AuthorizationRecord, part: HeldPart, what: str, cause: str) -> str:
        """The key of one operation on one hold: under the patch, named by the
        hold's own key and the issuer's id of what caused it."""
        if not self.durable:
            return self._key(record, what)
        return _derived(part.key, f"{what}/{cause}")

    def _post_key(self, record: AuthorizationRecord, part: HeldPart, transaction_id: str) -> str:
        """The key of posting (part of) a hold for an issuer transaction. It names
        the transaction in the form the reconciliation reads back
        (card/{card}/auth/{authorization}/post-{transaction}/{hold}), the hold
        by a short digest of its key, so one clearing posting from two holds
        takes two keys."""
        if not self.durable:
            return self._key(record, f"post-{transaction_id}")
        hold = hashlib.sha256(part.key.encode()).hexdigest()[:HOLD_DIGEST_CHARS]
        return step_key(f"auth/{record.authorization_id}/post-{transaction_id}/{hold}")

    def _issuer_hold_key(self, record: AuthorizationRecord, name: str, fallback: str) -> str:
        if not self.durable:
            return self._key(record, fallback)
        return step_key(f"auth/{record.authorization_id}/{name}")

    async def _claim(self, subject_id: str) -> bool:
        """Claim an issuer money event by its id before it moves money: False
        when another application (a repeat the card forgot, another run) took it."""
        self.state.events_claimed += 1
        return await step(
            self.state,
            CardTransactionActivities.claim,
            CardEventClaim(
                subject_id=subject_id,
                card_id=self.state.card_id,
                claimant=f"{workflow.info().run_id}/{self.state.events_claimed}",
            ),
        )

    def _finish(self, authorization_id: str) -> None:
        """Forget an authorization for good: a late snapshot never reopens it."""
        self.state.authorizations.pop(authorization_id, None)
        if not self.durable:
            return
        finished = self.state.finished_authorizations
        if authorization_id not in finished:
            finished.append(authorization_id)
            del finished[:-FINISHED_AUTHORIZATIONS_MAX]

    # ----- real-time decisions ----------------------------------------------

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
        if record is None:
            # The hold's expiry is part of its idempotent payload: from the
            # issuer's time of asking, never this workflow task's clock.
            asked_at = (
                request.requested_at if self.durable and request.requested_at is not None else now
            )
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
        # Counted before the hold is awaited, so concurrent requests on this
        # card see each other and never pass a limit together.
        count(state, now, request.amount_minor)
        async with self.lock:
            raced = next((d for d in record.decisions if d.index == index), None)
            if raced is not None:
                # The issuer's webhook about this very question got the lock
                # first: the card already follows the issuer's answer.
                count(state, now, -request.amount_minor)
                return _answer(raced)
            key = step_key(f"auth/{record.authorization_id}/d{index}")
            try:
                await self._open_accounts()
                held = await self._hold(key, request.amount_minor, record.expires_at)
            except LEDGER_REFUSALS as error:
                if not self.durable or is_cancellation(error):
                    raise
                # Refused outright (no answer was given): give back what this
                # ask counted, and leave no empty record for a later ask to wait on.
                count(state, now, -request.amount_minor)
                if record.next_decision == index + 1:
                    record.next_decision = index
                if not record.decisions and not record.held:
                    state.authorizations.pop(record.authorization_id, None)
                raise
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
                        partial = await self._hold(
                            f"{key}-partial", partial_minor, record.expires_at
                        )
                        if partial.accepted:
                            approved, why = partial_minor, PARTIALLY_APPROVED
                            key = partial.key
            count(state, now, approved - request.amount_minor)
            if approved:
                record.held.append(HeldPart(key=key, amount_minor=approved, decision=index))
            return self._decide(record, index, request, approved, why)

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
    ) -> AuthorizationAnswer:
        decision = DecisionRecord(
            index=index,
            kind=request.kind,
            requested_minor=request.amount_minor,
            approved_minor=approved_minor,
            reason=reason,
            request_id=request.request_id,
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

    # ----- the issuer's events ----------------------------------------------

    async def apply(self, event: CardNetworkEvent) -> None:
        """Apply one issuer event, once."""
        subject = event.transaction or event.reversal
        event_key = subject.id if subject is not None else event.event_id
        if event_key in self.state.seen_events:
            return
        async with self.lock:
            if not self.durable:
                await self._apply(event)
            else:
                try:
                    await self._apply_once(event)
                except LEDGER_REFUSALS as error:
                    if is_cancellation(error):
                        raise  # the card's cancellation, not the ledger's word
                    # A ledger refusal that no retry can change (a key used
                    # with another payload): never the end of the card.
                    self._conflict(event, error)
        self.state.seen_events.append(event_key)
        del self.state.seen_events[:-SEEN_EVENTS_MAX]

    async def _apply(self, event: CardNetworkEvent) -> None:
        await self._open_accounts()
        if event.authorization is not None:
            await self._reconcile(event.authorization, event)
        elif event.transaction is not None:
            await self._settle(event.transaction)
        elif event.reversal is not None:
            await self._reverse(event.reversal)

    async def _apply_once(self, event: CardNetworkEvent) -> None:
        """Money events (a transaction, a reversal) are claimed by the issuer's
        id first: a repeat the card no longer remembers moves nothing."""
        subject = event.transaction or event.reversal
        if subject is not None and not await self._claim(subject.id):
            workflow.logger.info("issuer event %s was already applied", subject.id)
            return
        await self._apply(event)

    def _conflict(self, event: CardNetworkEvent, error: ActivityError | ApplicationError) -> None:
        subject = event.transaction or event.reversal or event.authorization
        cause = error.cause or error
        workflow.logger.error("issuer event %s: the ledger refused: %s", event.event_id, cause)
        self._exception(
            "ledger_conflict",
            subject.amount_minor if subject is not None else 0,
            event.reversal.authorization_id
            if event.reversal
            else event.authorization.id
            if event.authorization
            else event.transaction.authorization_id
            if event.transaction
            else None,
            event.transaction.id if event.transaction else None,
            f"{event.type} {event.event_id} was not fully applied: {cause}",
        )

    async def _reconcile(self, issuer: IssuerAuthorization, event: CardNetworkEvent) -> None:
        """Make the holds match what the issuer decided, decision by decision."""
        state = self.state
        record = state.authorizations.get(issuer.id)
        approved_anything = any(d.outcome is DecisionOutcome.APPROVE for d in issuer.decisions)
        version = len(issuer.decisions) + len(issuer.history)
        if self.durable:
            if issuer.id in state.finished_authorizations:
                return  # finished stays finished: a late snapshot reopens nothing
            if record is not None and version < record.issuer_version:
                return  # older than what the card already took in
        if record is None:
            if issuer.status is not AuthorizationStatus.PENDING or not approved_anything:
                if (
                    self.durable
                    and issuer.status is not AuthorizationStatus.PENDING
                    and workflow.patched(CARD_FINISHED_BEFORE_DECIDED_PATCH)
                ):
                    # Ended before the card decided it: a decision asked later
                    # (an update delayed while the worker was away) holds nothing.
                    # (The gateway forwards no webhook of a purchase the card
                    # declined itself: one reaching here was decided without it.)
                    # Finished before looking for lost holds: a question
                    # taken while the ledger answers is declined, never held.
                    self._finish(issuer.id)
                    for index in range(len(issuer.decisions)):
                        await self._release_lost_hold(issuer.id, index)
                return
            now = workflow.now()
            if self.durable:
                # Durable: the issuer's own time of the authorization.
                now = datetime.fromisoformat(issuer.created_at)
            record = AuthorizationRecord(
                authorization_id=issuer.id,
                merchant=Merchant.model_validate(issuer.merchant.model_dump()),
                merchant_amount_minor=issuer.merchant_amount_minor,
                merchant_currency=issuer.merchant_currency,
                created_at=now,
                expires_at=now + timedelta(seconds=state.policy.hold_expiry_seconds),
            )
            state.authorizations[issuer.id] = record
        for index, theirs in enumerate(issuer.decisions):
            ours = next((d for d in record.decisions if d.index == index), None)
            if ours is not None and ours.reconciled:
                continue
            issuer_minor = (
                theirs.approved_amount_minor if theirs.outcome is DecisionOutcome.APPROVE else 0
            )
            if ours is None:
                # The card never answered this one in time: the issuer's
                # decision stands, and a later copy of the question follows it.
                ours = DecisionRecord(
                    index=index,
                    kind=theirs.kind,
                    requested_minor=theirs.requested_amount_minor,
                    approved_minor=0,
                    reason=f"followed the issuer ({theirs.decided_by.value}): {theirs.reason}",
                    decided_by=theirs.decided_by.value,
                )
                record.decisions.append(ours)
                record.decisions.sort(key=lambda d: d.index)
                record.next_decision = max(record.next_decision, index + 1)
                await self._release_lost_hold(record.authorization_id, index)
            elif theirs.decided_by is not DecidedBy.CARDFLOW:
                ours.reason += f"; the issuer applied {theirs.decided_by.value} {theirs.outcome}"
                ours.decided_by = theirs.decided_by.value
            if issuer_minor < ours.approved_minor:
                await self._release(
                    record, ours.approved_minor - issuer_minor, index, f"d{index}-follow"
                )
            elif issuer_minor > ours.approved_minor:
                await self._hold_for_issuer(
                    record, issuer_minor - ours.approved_minor, index, f"d{index}/issuer"
                )
            count(self.state, workflow.now(), issuer_minor - ours.approved_minor)
            ours.approved_minor = issuer_minor
            ours.reconciled = True
        record.authorized_minor = authorized_total(record.decisions)

        if self.durable:
            # Every advice entry of the issuer's history once, by its place in
            # that history, whichever snapshot brings it and in whatever order.
            for number, change in enumerate(issuer.history):
                if number < record.issuer_history_applied or change.kind != "advice":
                    continue
                if change.amount_minor > 0:
                    await self._hold_for_issuer(
                        record, change.amount_minor, None, f"advice/{number}"
                    )
                elif change.amount_minor < 0:
                    await self._release(record, -change.amount_minor, None, f"advice-{number}")
            record.issuer_history_applied = max(record.issuer_history_applied, len(issuer.history))
            record.issuer_version = max(record.issuer_version, version)
        elif event.type == "authorization.advice" and issuer.history:
            change = issuer.history[-1]
            if change.kind == "advice" and change.amount_minor > 0:
                await self._hold_for_issuer(record, change.amount_minor, None, "")
            elif change.kind == "advice" and change.amount_minor < 0:
                await self._release(record, -change.amount_minor, None, "")
        if issuer.status in (AuthorizationStatus.EXPIRED, AuthorizationStatus.DECLINED) or (
            issuer.status is not AuthorizationStatus.PENDING and issuer.pending_amount_minor == 0
        ):
            await self._release(record, record.held_minor, None, f"final-{issuer.status.value}")
        self._forget_if_done(record, issuer.status)

    async def _release_lost_hold(self, authorization_id: str, index: int) -> None:
        """Void the card's own hold of decision `index` (and its partial hold)
        if a lost workflow task left one in the ledger: the card is about to
        follow the issuer's answer to that question instead, and nothing else
        knows of that hold. A key never held is refused by the ledger
        (hold_not_found), which is the usual, harmless outcome."""
        if not self.durable or not workflow.patched(CARD_LOST_HOLDS_PATCH):
            return
        own = step_key(f"auth/{authorization_id}/d{index}")
        outcomes = await asyncio.gather(
            *(
                self._resolve(
                    HoldResolution(key=_derived(hold, "void-lost"), hold_key=hold, action="void")
                )
                for hold in (own, f"{own}-partial")
            )
        )
        for outcome in outcomes:
            if outcome.accepted:
                workflow.logger.warning(
                    "authorization %s: released %s held by a lost decision",
                    authorization_id,
                    outcome.amount_minor,
                )

    async def _hold_for_issuer(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, name: str
    ) -> None:
        """Hold what the issuer approved without the card (stand-in, advice);
        under the patch the key is named by the issuer's decision or entry."""
        key = self._issuer_hold_key(record, name, "issuer-hold")
        held = await self._hold(key, amount_minor, record.expires_at)
        if held.accepted:
            record.held.append(
                HeldPart(
                    key=key, amount_minor=amount_minor, decision=-1 if index is None else index
                )
            )
            return
        self._exception(
            "uncovered",
            amount_minor,
            record.authorization_id,
            None,
            f"the issuer approved {amount_minor} the wallet cannot hold ({held.detail}); "
            "a clearing of it will need an operator",
        )

    async def _release(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, cause: str
    ) -> None:
        """Give back up to amount_minor of the holds (of one decision, or the
        newest first), keeping the rest held. `cause` names what released it
        (the issuer's id of it, under the patch) in the keys."""
        remaining = await self._release_parts(record, amount_minor, index, cause)
        if (
            remaining > 0
            and index is not None
            and record.held
            and workflow.patched(CARD_RELEASE_ACROSS_HOLDS_PATCH)
        ):
            # The decision's own holds were given back already (a reversal
            # from before it, applied after it, takes the newest hold first):
            # the rest comes from the authorization's other holds.
            await self._release_parts(record, remaining, None, f"{cause}-rest")

    async def _release_parts(
        self, record: AuthorizationRecord, amount_minor: int, index: int | None, cause: str
    ) -> int:
        """Release up to amount_minor from the holds (of one decision, or all),
        newest first; returns what was left to release."""
        remaining = amount_minor
        for part in reversed(list(record.held)):
            if remaining <= 0:
                break
            if index is not None and part.decision != index:
                continue
            take = min(part.amount_minor, remaining)
            if take == part.amount_minor:
                await self._resolve(
                    HoldResolution(
                        key=self._part_key(record, part, "void", cause),
                        hold_key=part.key,
                        action="void",
                    )
                )
                record.held.remove(part)
            else:
                rest_key = self._part_key(record, part, "rest", cause)
                await self._resolve(
                    HoldResolution(
                        key=self._part_key(record, part, "void-part", cause),
                        hold_key=part.key,
                        action="void",
                        amount_minor=take,
                        rest_key=rest_key,
                    )
                )
                part.key, part.amount_minor = rest_key, part.amount_minor - take
            remaining -= take
        return remaining

    async def _post_from_holds(
        self, record: AuthorizationRecord, amount_minor: int, transaction_id: str
    ) -> int:
        """Post up to amount_minor from the holds, oldest first; what a part
        does not use stays held. Returns what is left to post."""
        remaining = amount_minor
        for part in list(record.held):
            if remaining <= 0:
                break
            take = min(part.amount_minor, remaining)
            rest_key = (
                self._part_key(record, part, "rest", transaction_id)
                if take < part.amount_minor
                else None
            )
            posted = await self._resolve(
                HoldResolution(
                    key=self._post_key(record, part, transaction_id),
                    hold_key=part.key,
                    action="post",
                    amount_minor=take if rest_key else None,
                    rest_key=rest_key,
                )
            )
            if not posted.accepted:
                # The hold is gone (expired in the ledger): post it plainly below.
                record.held.remove(part)
                continue
            if rest_key is None:
                record.held.remove(part)
            else:
                part.key, part.amount_minor = rest_key, part.amount_minor - take
            remaining -= take
        return remaining

    async def _settle(self, transaction: IssuerTransaction) -> None:
        state = self.state
        if transaction.type is TransactionType.REFUND:
            await self._transfer(
                step_key(f"refund/{transaction.id}"),
                self.settlement,
                self.wallet,
                transaction.amount_minor,
            )
            await self._record(transaction)
            if transaction.refunded_transaction_id:
                await self._claw_back(transaction)
            return
        if transaction.type not in (TransactionType.CLEARING, TransactionType.FORCE_POST):
            return  # chargebacks belong to the dispute process
        record = (
            state.authorizations.get(transaction.authorization_id)
            if transaction.authorization_id
            else None
        )
        remaining = transaction.amount_minor
        if record is not None:
            remaining = await self._post_from_holds(record, remaining, transaction.id)
            record.cleared_minor += transaction.amount_minor
        if remaining > 0:
            await self._post_excess(record, transaction, remaining)
        if record is not None:
            if transaction.released_amount_minor:
                await self._release(
                    record, transaction.released_amount_minor, None, f"release-{transaction.id}"
                )
            if transaction.authorization_status not in (None, AuthorizationStatus.PENDING):
                await self._release(record, record.held_minor, None, f"final-{transaction.id}")
            self._forget_if_done(record, transaction.authorization_status)
        await self._record(transaction)
        await self._start_cashback(transaction)

    async def _post_excess(
        self, record: AuthorizationRecord | None, transaction: IssuerTransaction, excess: int
    ) -> None:
        """Post what a clearing takes beyond the holds: within the tolerance
        of what was authorized (or with no authorization at all: a force post
        or a late presentment) straight from the wallet; beyond it, or when
        the wallet cannot cover it, an exception for an operator."""
        if record is not None and not excess_within_tolerance(
            record.authorized_minor,
            record.cleared_minor,
            record.over_minor,
            excess,
            self.state.policy.clearing_over_tolerance_bps,
        ):
            self._exception(
                "over_tolerance",
                excess,
                record.authorization_id if record else None,
                transaction.id,
                f"clearing {transaction.id} is {excess} over the authorization, beyond the "
                f"{self.state.policy.clearing_over_tolerance_bps} bps tolerance",
            )
            return
        posted = await self._transfer(
            step_key(f"post/{transaction.id}"), self.wallet, self.settlement, excess
        )
        if posted.accepted:
            if record is not None and record.cleared_minor > record.authorized_minor:
                record.over_minor += excess
            return
        self._exception(
            "uncovered",
            excess,
            record.authorization_id if record else None,
            transaction.id,
            f"the issuer settled {excess} the wallet cannot cover ({posted.detail})",
        )

    async def _reverse(self, reversal: IssuerReversal) -> None:
        record = self.state.authorizations.get(reversal.authorization_id)
        if record is None:
            return
        await self._release(record, reversal.amount_minor, None, f"reversal-{reversal.id}")
        count(self.state, workflow.now(), -reversal.amount_minor)
        if reversal.authorization_status is not AuthorizationStatus.PENDING:
            await self._release(record, record.held_minor, None, f"final-{reversal.id}")
        self._forget_if_done(record, reversal.authorization_status)

    def _forget_if_done(
        self, record: AuthorizationRecord, issuer_status: AuthorizationStatus | None
    ) -> None:
        finished = issuer_status not in (None, AuthorizationStatus.PENDING)
        if not record.held and finished:
            self._finish(record.authorization_id)
        elif not record.held and all(d.reconciled for d in record.decisions):
            self.state.authorizations.pop(record.authorization_id, None)

    # ----- hold expiry ------------------------------------------------------

    def next_expiry(self) -> datetime | None:
        held = [r.expires_at for r in self.state.authorizations.values()]
        return min(held) if held else None

    async def expire_due(self) -> None:
        """Void the holds of authorizations past the policy's hold period."""
        now = workflow.now()
        for record in list(self.state.authorizations.values()):
            if record.expires_at > now:
                continue
            async with self.lock:
                try:
                    await self._release(record, record.held_minor, None, "expired")
                except LEDGER_REFUSALS as error:
                    if not self.durable or is_cancellation(error):
                        raise
                    # Never the end of the card, and never a timer firing
                    # again at once: the ledger's own expiry (the hold's
                    # expires_at) releases what is left; an operator looks.
                    workflow.logger.error(
                        "expiring %s: the ledger refused: %s",
                        record.authorization_id,
                        error.cause or error,
                    )
                    self._exception(
                        "ledger_conflict",
                        record.held_minor,
                        record.authorization_id,
                        None,
                        f"expiring {record.authorization_id} was not fully applied:"
                        f" {error.cause or error}",
                    )
                self._finish(record.authorization_id)

    # ----- operators --------------------------------------------------------

    def _exception(
        self,
        kind: str,
        amount_minor: int,
        authorization_id: str | None,
        transaction_id: str | None,
        detail: str,
    ) -> None:
        self.state.exceptions.append(
            CardException(
                id=f"exc-{len(self.state.exceptions) + 1}",
                kind=kind,  # type: ignore[arg-type]
                amount_minor=amount_minor,
                authorization_id=authorization_id,
                transaction_id=transaction_id,
                detail=detail,
            )
        )

    def open_exceptions(self) -> list[CardException]:
        return [e for e in self.state.exceptions if e.resolution is None]

    async def resolve_exception(self, decision: ExceptionDecision) -> str:
        found = next(e for e in self.state.exceptions if e.id == decision.exception_id)
        async with self.lock:
            await self._open_accounts()
            if decision.action == "dismiss":
                pass  # a conflict an operator put right by hand: nothing to move
            elif decision.action == "charge":
                charged = await self._transfer(
                    _exception_key(found, "charge", found.charges_refused),
                    self.wallet,
                    self.settlement,
                    found.amount_minor,
                )
                if not charged.accepted:
                    found.charges_refused += 1
                    return f"not charged: {charged.detail}; the exception stays open"
            else:
                await self._transfer(
                    _exception_key(found, "write-off"),
                    accounts.suspense_reconciliation(self.state.currency),
                    self.settlement,
                    found.amount_minor,
                )
        found.resolution = f"{decision.action}: {decision.reason}"
        return found.resolution

    # ----- follow-ups -------------------------------------------------------

    async def _record(self, transaction: IssuerTransaction) -> None:
        merchant = transaction.merchant
        await step(
            self.state,
            CardTransactionActivities.record,
            CardTransactionRecord(
                transaction_id=transaction.id,
                card_id=self.state.card_id,
                customer_id=self.state.customer_id,
                kind=transaction.type.value,
                authorization_id=transaction.authorization_id,
                refunded_transaction_id=transaction.refunded_transaction_id,
                amount_minor=transaction.amount_minor,
                currency=transaction.currency,
                merchant_amount_minor=transaction.merchant_amount_minor,
                merchant_currency=transaction.merchant_currency,
                merchant_name=merchant.name if merchant else None,
                mcc=merchant.mcc if merchant else None,
                occurred_at=datetime.fromisoformat(transaction.created_at),
            ),
        )

    async def _start_cashback(self, transaction: IssuerTransaction) -> None:
        if transaction.merchant is None:
            return
        cashback = CashbackInput(
            transaction_id=transaction.id,
            customer_id=self.state.customer_id,
            card_id=self.state.card_id,
            amount_minor=transaction.amount_minor,
            currency=transaction.currency,
            mcc=transaction.merchant.mcc,
            merchant_name=transaction.merchant.name,
            occurred_at=datetime.fromisoformat(transaction.created_at),
            ledger_task_queue=self.state.ledger_task_queue,
            providers_task_queue=self.state.providers_task_queue,
            workflows_task_queue=self.state.workflows_task_queue,
        )
        metadata = cashback_start_metadata(cashback)
        try:
            await workflow.start_child_workflow(
                Cashback.run,
                cashback,
                id=cashback_workflow_id(transaction.id),
                static_summary=metadata.summary,
                static_details=metadata.details,
                task_queue=self.state.workflows_task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                # A purchase's cashback is decided once, even after it finished.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # this purchase's cashback is already being decided

    async def _claw_back(self, refund: IssuerTransaction) -> None:
        assert refund.refunded_transaction_id is not None
        handle = workflow.get_external_workflow_handle(
            cashback_workflow_id(refund.refunded_transaction_id)
        )
        try:
            await handle.signal(
                Cashback.refund,
                CashbackRefund(refund_id=refund.id, amount_minor=refund.amount_minor),
            )
        except Exception:  # noqa: BLE001 - no cashback process (any more): nothing to claw back
            workflow.logger.info("no cashback to claw back for %s", refund.refunded_transaction_id)


def _answer(decision: DecisionRecord) -> AuthorizationAnswer:
    return AuthorizationAnswer(
        decision="approve" if decision.approved_minor > 0 else "decline",
        approved_amount_minor=decision.approved_minor,
        reason=decision.reason,
    )


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


def _derived(base: str, suffix: str) -> str:
    """A key derived from another key; past the ledger's length, a digest of
    the whole name under the same authorization's prefix."""
    key = f"{base}/{suffix}"
    if len(key) <= DERIVED_KEY_CHARS_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{base[: DERIVED_KEY_CHARS_MAX - 43]}/~{digest}"


def _exception_key(found: CardException, action: str, attempt: int = 0) -> str:
    """The key of an exception's settling transfer. It names the issuer's
    transaction, as the card's other postings on issuer:settlement do, so the
    reconciliation counts it toward that transaction (and never fixes, or
    fixes twice, what the operator's decision already settled). A charge
    after `attempt` refused ones names its attempt beside the exception."""
    exception = found.id if attempt == 0 else f"{found.id}~{attempt}"
    if found.transaction_id is None:
        return step_key(f"exception/{exception}/{action}")
    return step_key(f"exception/{exception}/{action}/{found.transaction_id}")
