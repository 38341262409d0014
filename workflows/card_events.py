"""The issuer's events on the card (workflows/card_money.py), as
`network_event` signals applied one at a time under the card's lock:
- an authorization's snapshot (created, declined, incremented, advice,
  expired) is compared with the card's own decisions: when the issuer did
  something else, the holds follow the issuer;
- a clearing posts from the holds (lower: the rest stays held, or is released
  when final; higher: the excess within the tolerance as an extra transfer,
  beyond it an operator exception); several may follow one authorization;
- a reversal releases all or part of the holds; a force post debits the
  wallet without an authorization; a refund credits it (and claws back the
  purchase's cashback);
- a settled purchase is recorded and its cashback process started.
A ledger conflict never fails the card: it becomes an exception for an
operator. Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.card_transactions import CardTransactionActivities, CardTransactionRecord
    from schemas.card_rules import authorized_total, count, excess_within_tolerance
    from schemas.cards import AuthorizationRecord, CardNetworkEvent, DecisionRecord, Merchant
    from schemas.cashback import CashbackInput, CashbackRefund
    from schemas.issuer import Authorization as IssuerAuthorization
    from schemas.issuer import AuthorizationStatus, DecidedBy, DecisionOutcome, TransactionType
    from schemas.issuer import Reversal as IssuerReversal
    from schemas.issuer import Transaction as IssuerTransaction
    from workflows.cancellation import is_cancellation
    from workflows.card_holds import CardHolds
    from workflows.card_ledger import CARD_FINISHED_BEFORE_DECIDED_PATCH, LEDGER_REFUSALS
    from workflows.cashback import Cashback, cashback_start_metadata, cashback_workflow_id
    from workflows.steps import step, step_key

# Issuer events remembered by id: a fast path; older repeats of money events
# are stopped by their claims, of snapshots by the finished list and versions.
SEEN_EVENTS_MAX = 500


class CardEvents(CardHolds):
    """The issuer's events, applied to the card's holds and wallet."""

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
            purchase = 1 if ours.kind == "initial" else 0
            count(
                self.state,
                workflow.now(),
                issuer_minor - ours.approved_minor,
                mcc=record.merchant.mcc,
                purchases=(
                    purchase
                    if ours.approved_minor == 0 < issuer_minor
                    else -purchase
                    if issuer_minor == 0 < ours.approved_minor
                    else 0
                ),
            )
            if ours.approved_minor == 0 < issuer_minor:
                self.state.purchases_approved += purchase
                if self.state.locked_merchant is None:
                    self.state.locked_merchant = record.merchant.name
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

    async def _settle(self, transaction: IssuerTransaction) -> None:
        state = self.state
        if transaction.type is TransactionType.REFUND:
            await self._transfer(
                step_key(f"refund/{transaction.id}"),
                self.settlement,
                self.wallet,
                transaction.amount_minor,
            )
            await self._record(transaction, transaction.amount_minor)
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
        unposted = 0
        if remaining > 0:
            unposted = await self._post_excess(record, transaction, remaining)
        if record is not None:
            if transaction.released_amount_minor:
                await self._release(
                    record, transaction.released_amount_minor, None, f"release-{transaction.id}"
                )
            if transaction.authorization_status not in (None, AuthorizationStatus.PENDING):
                await self._release(record, record.held_minor, None, f"final-{transaction.id}")
            self._forget_if_done(record, transaction.authorization_status)
        await self._record(transaction, transaction.amount_minor - unposted)
        # A single-use card closes once it holds nothing (the card entity).
        state.cleared_once = True
        await self._start_cashback(transaction)

    async def _post_excess(
        self, record: AuthorizationRecord | None, transaction: IssuerTransaction, excess: int
    ) -> int:
        """Post what a clearing takes beyond the holds: within the tolerance
        of what was authorized (or with no authorization at all: a force post
        or a late presentment) straight from the wallet; beyond it, or when
        the wallet cannot cover it, an exception for an operator. Returns
        what was left unposted (0, or the excess the exception holds)."""
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
            return excess
        posted = await self._transfer(
            step_key(f"post/{transaction.id}"), self.wallet, self.settlement, excess
        )
        if posted.accepted:
            if record is not None and record.cleared_minor > record.authorized_minor:
                record.over_minor += excess
            return 0
        self._exception(
            "uncovered",
            excess,
            record.authorization_id if record else None,
            transaction.id,
            f"the issuer settled {excess} the wallet cannot cover ({posted.detail})",
        )
        return excess

    async def _reverse(self, reversal: IssuerReversal) -> None:
        record = self.state.authorizations.get(reversal.authorization_id)
        if record is None:
            return
        await self._release(record, reversal.amount_minor, None, f"reversal-{reversal.id}")
        count(self.state, workflow.now(), -reversal.amount_minor, mcc=record.merchant.mcc)
        if reversal.authorization_status is not AuthorizationStatus.PENDING:
            await self._release(record, record.held_minor, None, f"final-{reversal.id}")
        self._forget_if_done(record, reversal.authorization_status)

    # ----- follow-ups -------------------------------------------------------

    async def _record(self, transaction: IssuerTransaction, posted_minor: int) -> None:
        """Record the settled transaction, with what the card posted for it
        (less than its amount while an exception holds the rest)."""
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
                posted_minor=posted_minor,
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
