"""Card issuing `card-issue/{request_id}` and the card entity `card/{card_id}`.

Issuing: refuse a customer whose onboarding is not approved; charge the
issuance fee; create the cardholder (once per customer) and the card. A
virtual card is open at once. A physical card follows the shipping webhooks
(signal `shipping_update`), takes `reschedule_delivery` until it ships and
`activate` once delivered. Saga: each step registers its undo as it succeeds
(fee -> refund, card -> close at the issuer); a later failure runs them in
reverse, shielded from cancellation. On success it starts the card's entity
workflow, which outlives it.

The card entity holds one card's state (open / paused / closed), takes
`freeze`, `unfreeze` and `close` as updates, and continues as new before its
history grows large, carrying its state; it waits for running handlers first
so no message is lost across the boundary.

A card reported lost or stolen is reissued by its entity, which records the
replacement in `cards` (linked to the card it replaces) like any card cardflow
issued. A virtual replacement is open at once: its entity starts right away.
A physical one is shipped and must be activated once delivered, so the entity
starts an issuing process for it, `card-issue/{replacement card id}`, which
takes its shipping webhooks, `reschedule_delivery` and `activate` exactly as
for a new card and starts the replacement's entity once it is activated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import date, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.customers import CustomerActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from activities.providers.cards import (
        CardActivities,
        CardholderRequest,
        CardRecord,
        CardStateRequest,
        CreateCard,
    )
    from schemas.accounts import revenue_fees, system_account
    from schemas.cards import (
        AuthorizationAnswer,
        AuthorizationRequest,
        CardActivationRequest,
        CardInput,
        CardIssueInput,
        CardIssueResult,
        CardIssueStatus,
        CardNetworkEvent,
        CardReissue,
        CardReissueRequest,
        CardStateChange,
        DeliveryRescheduleRequest,
        ExceptionDecision,
        RescheduleDelivery,
        ShippingUpdate,
        SpendingLimits,
    )
    from schemas.customers import KycStatus, Notification
    from schemas.issuer import Card, CardState, CardType, ReissueReason, ShippingStatus
    from schemas.ledger import TransferRequest
    from schemas.providers import ISSUER
    from schemas.refusals import Refusal, refused
    from schemas.search import CARD_ID, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation
    from workflows.card_money import CardMoney
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.onboarding import wallet_code
    from workflows.process import ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for

CARD_ISSUE_WORKFLOW = "CardIssue"
CARD_WORKFLOW = "Card"
SHIPPING_UPDATE_SIGNAL = "shipping_update"
RESCHEDULE_UPDATE = "reschedule_delivery"
ACTIVATE_UPDATE = "activate"
FREEZE_UPDATE = "freeze"
UNFREEZE_UPDATE = "unfreeze"
CLOSE_UPDATE = "close"
LIMITS_UPDATE = "set_limits"
REPORT_LOST_UPDATE = "report_lost"
REPORT_STOLEN_UPDATE = "report_stolen"
AUTHORIZE_UPDATE = "authorize"
NETWORK_EVENT_SIGNAL = "network_event"
RESOLVE_EXCEPTION_UPDATE = "resolve_exception"
# Cards live for years, so this change of the card's commands is behind a
# patch: a card that started before it replays without it (patched() is False
# there). With it, the card also carries Currency and Provider, and its
# ProcessStatus is STATUS_EXCEPTION while money waits for an operator's
# resolve_exception. Once no card runs the old code: deprecate_patch, then remove.
CARD_SEARCH_ATTRIBUTES_PATCH = "card-search-attributes-v2"
# Also a change of the card's commands, so behind a patch: with it, a reissue
# records the replacement in `cards`, and a physical replacement is followed by
# its own issuing process until activated (a card reissued before it had its
# entity started in the issuer's pending state, never recorded nor activated).
CARD_REPLACEMENT_PATCH = "card-replacement-recorded"
# An issuing cancelled while its fee posts (the activity runs on and may
# charge it) refunds the fee if the ledger says it was charged, learnt by
# submitting the fee again with its key; runs recorded before it kept the fee.
CARD_ISSUE_INTERRUPTED_FEE_PATCH = "card-issue-interrupted-fee-refunded"
# A change of the card's commands, so behind a patch: with it, a decision (an
# authorization, an operator's resolution) starts only after the run loop has
# finished its unit of work in progress and run what it can. A worker that
# takes the card without it in memory can be handed an activity's completion
# from the last task together with the next decision, the decision first;
# without this, the decision took the card's money lock ahead of an earlier
# event there and behind it on replay, and the card's history no longer replayed.
CARD_DECISIONS_AFTER_EVENTS_PATCH = "card-decisions-after-earlier-events"
# patch: a decision waits until the run loop is idle (no unit of work in
# progress, no issuer event queued), not only for the unit in progress. A
# workflow task that recorded nothing is handed to a restarted worker in one
# activation with the next task's signals and updates, but to a worker
# replaying the history on its own: waiting for the unit in progress alone,
# the decision then came after the loop's next event's activities on the one
# and before them on the other, and the card's history no longer replayed.
CARD_DECISIONS_WHEN_IDLE_PATCH = "card-decisions-when-idle"
# The card's ProcessStatus: its state (open, paused, closed), or one of these.
STATUS_EXCEPTION = "exception"
STATUS_REPLACED = "replaced"
SHORT_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))


def card_issue_workflow_id(request_id: str) -> str:
    return f"card-issue/{request_id}"


def card_workflow_id(card_id: str) -> str:
    return f"card/{card_id}"


def replacement_request_id(card_id: str) -> str:
    """A replacement's issuing request is named after the card itself: the
    customer learns the new card's id when reporting the old one, and reaches
    its issuing (shipping, activation) with that id."""
    return card_id


def card_issue_start_metadata(request: CardIssueInput) -> StartMetadata:
    if request.reissue is not None:
        return start_metadata(
            f"Replacement {request.kind} card {request.reissue.card.id} for"
            f" {request.reissue.replaces} of customer {request.customer_id}",
            {
                "request": request.request_id,
                "customer": request.customer_id,
                "kind": request.kind,
                "replaces": request.reissue.replaces,
            },
            "its shipping webhooks (signal `shipping_update`) and the `activate` update"
            " once delivered",
        )
    return start_metadata(
        f"{request.kind} {request.currency.value} card for customer {request.customer_id}",
        {
            "request": request.request_id,
            "customer": request.customer_id,
            "kind": request.kind,
            "currency": request.currency.value,
        },
        "the issuer creating the card; for a physical card its shipping webhooks"
        " (signal `shipping_update`) and the `activate` update once delivered",
    )


def card_start_metadata(card: CardInput) -> StartMetadata:
    return start_metadata(
        f"Card {card.card_id} of customer {card.customer_id}",
        {"card": card.card_id, "customer": card.customer_id, "currency": card.currency.value},
        "the issuer's authorizations (update `authorize`) and events (signal"
        " `network_event`); operators' `freeze`, `unfreeze`, `close`, `set_limits` and"
        " `resolve_exception` updates",
    )


async def start_card_entity(card: CardInput) -> None:
    """Start the card's own long-lived workflow; it outlives whoever starts it."""
    metadata = card_start_metadata(card)
    await workflow.start_child_workflow(
        CardEntity.run,
        card,
        id=card_workflow_id(card.card_id),
        task_queue=card.workflows_task_queue,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def start_card_issue(request: CardIssueInput) -> None:
    """Start an issuing process that outlives whoever starts it (a replacement's)."""
    metadata = card_issue_start_metadata(request)
    await workflow.start_child_workflow(
        CardIssue.run,
        request,
        id=card_issue_workflow_id(request.request_id),
        task_queue=request.workflows_task_queue,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


def fee_account(currency: str) -> str:
    return revenue_fees(currency)


@workflow.defn(name=CARD_ISSUE_WORKFLOW)
class CardIssue:
    def __init__(self) -> None:
        self._input: CardIssueInput | None = None
        self.progress = ProcessStage("starting", self._details)
        self._card: Card | None = None
        self._shipping: ShippingUpdate | None = None
        self._activated = False
        self._saga = Saga()

    # ----- platform: the saga ---------------------------------------------

    @workflow.run
    async def run(self, request: CardIssueInput) -> CardIssueResult:
        self._input = request
        # Attributes added to an upsert the workflow already issues here keep
        # its commands as they were: histories of older runs still replay.
        self.progress.search(
            CUSTOMER_ID.value_set(request.customer_id),
            CURRENCY.value_set(request.currency.value),
            PROVIDER.value_set(ISSUER),
        )
        try:
            return await self._issue(request)
        # Failures and cancellation, but not the SDK's eviction of a cached
        # workflow, which must never run compensations.
        except (Exception, asyncio.CancelledError) as error:
            self.progress.enter("compensating")
            await self._saga.compensate()
            self.progress.enter("cancelled" if is_cancellation(error) else "failed")
            await asyncio.shield(
                asyncio.ensure_future(
                    self._notify(
                        "failed",
                        "We could not issue your card",
                        "Something went wrong while issuing your card; any fee was refunded.",
                    )
                )
            )
            raise

    # ----- business steps -------------------------------------------------

    async def _issue(self, request: CardIssueInput) -> CardIssueResult:
        if request.reissue is not None:
            return await self._follow_replacement(request, request.reissue)
        self.progress.enter("checking the customer")
        kyc = await step(request, CustomerActivities.get_kyc_status, request.customer_id)
        if kyc is not KycStatus.APPROVED:
            raise ApplicationError(
                f"customer {request.customer_id} cannot get a card: onboarding is "
                f"{kyc.value if kyc else 'not started'}",
                type="CustomerNotApproved",
                non_retryable=True,
            )

        fee = (
            request.policy.issuance_fee_physical_minor
            if request.kind == "physical"
            else request.policy.issuance_fee_virtual_minor
        )
        if fee:
            await self._charge_fee(request, fee)

        self.progress.enter("creating the card at the issuer")
        # The input's validator: a new card always comes with an address.
        assert request.address is not None
        cardholder_id = await step(
            request,
            CardActivities.ensure_cardholder,
            CardholderRequest(
                customer_id=request.customer_id,
                address=request.address,
                key=step_key("cardholder-address"),
            ),
        )
        card = await step(
            request,
            CardActivities.create_card,
            CreateCard(
                key=step_key("card"),
                cardholder_id=cardholder_id,
                kind=request.kind,
                currency=request.currency,
                address=request.address,
            ),
        )
        self._card = card
        self._saga.done(self._close_card)
        self.progress.search(CARD_ID.value_set(card.id))
        await step(
            request,
            CardActivities.record_card,
            CardRecord(
                card_id=card.id,
                request_id=request.request_id,
                customer_id=request.customer_id,
                kind=request.kind,
            ),
        )

        if request.kind == "physical":
            await self._deliver(request)

        await start_card_entity(
            CardInput(
                card_id=card.id,
                customer_id=request.customer_id,
                state=CardState.OPEN,
                currency=request.currency,
                policy=request.card_policy,
                ledger_task_queue=request.ledger_task_queue,
                providers_task_queue=request.providers_task_queue,
                workflows_task_queue=request.workflows_task_queue,
            )
        )
        self.progress.enter("open")
        await self._notify(
            "ready",
            f"Your {request.kind} card is ready",
            f"Your card ending {card.last4} is open and ready to use.",
        )
        return CardIssueResult(
            request_id=request.request_id, card_id=card.id, state="open", fee_minor=fee
        )

    async def _follow_replacement(
        self, request: CardIssueInput, reissue: CardReissue
    ) -> CardIssueResult:
        """A replacement the old card's entity already obtained from the issuer
        (and records): shipped, delivered and activated like a new card (the
        same shipping webhooks, `reschedule_delivery` and `activate`), then its
        entity starts open, carrying the old card's limits. No fee: the card
        replaces one the customer already paid for."""
        card = reissue.card
        self._card = card
        # Never delivered or never activated: the replacement is closed at the issuer.
        self._saga.done(self._close_card)
        self.progress.search(CARD_ID.value_set(card.id))
        if request.kind == "physical":
            await self._deliver(request)
        await start_card_entity(reissue.entity.model_copy(update={"state": CardState.OPEN}))
        self.progress.enter("open")
        await self._notify(
            "ready",
            f"Your replacement {request.kind} card is ready",
            f"Your new card ending {card.last4} is open and ready to use.",
        )
        return CardIssueResult(
            request_id=request.request_id, card_id=card.id, state="open", fee_minor=0
        )

    async def _charge_fee(self, request: CardIssueInput, fee: int) -> None:
        self.progress.enter("charging the issuance fee")
        revenue = fee_account(request.currency.value)
        await step(request, LedgerActivities.open_account, system_account(revenue))
        wallet = wallet_code(request.customer_id, request.currency.value)
        charge = TransferRequest(
            key=step_key("fee"),
            debit=wallet,
            credit=revenue,
            amount_minor=fee,
            currency=request.currency,
        )
        try:
            charged = await step(request, LedgerActivities.transfer, charge)
        except ActivityError as error:
            if is_cancellation(error) and workflow.patched(CARD_ISSUE_INTERRUPTED_FEE_PATCH):
                # The fee may post all the same: undone if the ledger says so.
                self._saga.done(lambda: self._refund_if_charged(charge))
            raise
        if not charged.accepted:
            raise ApplicationError(
                f"the issuance fee of {fee} could not be charged: {charged.detail}",
                type="FeeNotCharged",
                non_retryable=True,
            )

        self._saga.done(lambda: self._refund_fee(charge))

    async def _refund_fee(self, charge: TransferRequest) -> None:
        await step(
            self._queues,
            LedgerActivities.transfer,
            TransferRequest(
                key=step_key("fee-refund"),
                debit=charge.credit,
                credit=charge.debit,
                amount_minor=charge.amount_minor,
                currency=charge.currency,
            ),
        )

    async def _refund_if_charged(self, charge: TransferRequest) -> None:
        """Compensation of a fee whose posting was interrupted: submitted again
        with its key, the ledger answers the first outcome (or charges it now, if
        the first never got there); refunded if charged."""
        charged = await step(self._queues, LedgerActivities.transfer, charge)
        if charged.accepted:
            await self._refund_fee(charge)

    async def _deliver(self, request: CardIssueInput) -> None:
        self.progress.enter("shipping")
        delivered = await wait_for(
            lambda: (
                self._shipping is not None
                and self._shipping.status
                in (ShippingStatus.DELIVERED, ShippingStatus.RETURNED, ShippingStatus.FAILURE)
            ),
            request.policy.delivery_wait_seconds,
        )
        if not delivered or self._shipping is None:
            raise ApplicationError(
                "the card was not delivered in time", type="NotDelivered", non_retryable=True
            )
        if self._shipping.status is not ShippingStatus.DELIVERED:
            raise ApplicationError(
                f"shipping ended {self._shipping.status.value}",
                type="NotDelivered",
                non_retryable=True,
            )
        self.progress.enter("delivered: waiting for activation")
        if not await wait_for(lambda: self._activated, request.policy.activation_wait_seconds):
            raise ApplicationError(
                "the card was not activated in time", type="NotActivated", non_retryable=True
            )

    # ----- messages -------------------------------------------------------

    @workflow.signal(name=SHIPPING_UPDATE_SIGNAL)
    def shipping_update(self, update: ShippingUpdate) -> None:
        # Webhooks arrive twice or out of order: shipping only moves forward.
        order = [
            ShippingStatus.PENDING,
            ShippingStatus.SUBMITTED,
            ShippingStatus.SHIPPED,
            ShippingStatus.DELIVERED,
            ShippingStatus.RETURNED,
            ShippingStatus.FAILURE,
        ]
        if self._shipping is None or order.index(update.status) >= order.index(
            self._shipping.status
        ):
            self._shipping = update
            self.progress.show()

    @workflow.update(name=RESCHEDULE_UPDATE)
    async def reschedule_delivery(self, change: RescheduleDelivery) -> str:
        assert self._card is not None
        card = await step(
            self._queues,
            CardActivities.reschedule_delivery,
            DeliveryRescheduleRequest(
                key=step_key(f"reschedule/{change.delivery_date}"),
                card_id=self._card.id,
                delivery_date=change.delivery_date,
            ),
        )
        requested = card.shipping.requested_delivery_date if card.shipping else None
        return f"delivery rescheduled to {requested or change.delivery_date}"

    @reschedule_delivery.validator
    def _validate_reschedule(self, change: RescheduleDelivery) -> None:
        if self._card is None or self._input is None or self._input.kind != "physical":
            raise refused(Refusal.WRONG_STATE, "no physical card is being shipped")
        shipped = (
            ShippingStatus.SHIPPED,
            ShippingStatus.DELIVERED,
            ShippingStatus.RETURNED,
            ShippingStatus.FAILURE,
        )
        if self._shipping is not None and self._shipping.status in shipped:
            raise refused(
                Refusal.WRONG_STATE, f"the card has already {self._shipping.status.value}"
            )
        if change.delivery_date <= workflow.now().date():
            raise refused(Refusal.INVALID_REQUEST, "delivery_date must be in the future")

    @workflow.update(name=ACTIVATE_UPDATE)
    async def activate(self) -> str:
        assert self._card is not None
        await step(
            self._queues,
            CardActivities.activate_card,
            CardActivationRequest(key=step_key("activate"), card_id=self._card.id),
        )
        self._activated = True
        return "card activated"

    @activate.validator
    def _validate_activate(self) -> None:
        if self._card is None:
            # A replacement's webhooks can outrun its issuing's first task
            # (handlers run before the process's own code in that task).
            raise refused(Refusal.WRONG_STATE, "the card is not issued yet")
        if self._shipping is None or self._shipping.status is not ShippingStatus.DELIVERED:
            raise refused(Refusal.WRONG_STATE, "the card can be activated once delivered")
        if self._activated:
            raise refused(Refusal.ALREADY_DONE, "the card is already activated")

    @workflow.query
    def status(self) -> CardIssueStatus:
        return CardIssueStatus(
            request_id=self._input.request_id if self._input else "",
            stage=self.progress.stage,
            card_id=self._card.id if self._card else None,
            shipping=self._shipping,
        )

    # ----- helpers --------------------------------------------------------

    async def _notify(self, what: str, subject: str, body: str) -> None:
        await step(
            self._queues,
            ProviderActivities.notify_customer,
            Notification(
                key=step_key(f"notify/{what}"),
                customer_id=self._queues.customer_id,
                subject=subject,
                body=body,
            ),
        )

    async def _close_card(self) -> None:
        assert self._card is not None
        await step(
            self._queues,
            CardActivities.set_card_state,
            CardStateRequest(
                key=step_key("close"),
                card_id=self._card.id,
                state=CardState.CLOSED,
                reason="issuing did not complete",
            ),
        )

    def _details(self) -> str:
        details = f"Card issuing: {self.progress.stage}"
        if self._shipping is not None:
            details += (
                f" | shipping {self._shipping.status.value}"
                f" carrier {self._shipping.carrier or '-'}"
                f" tracking {self._shipping.tracking_number or '-'}"
                f" ETA {self._shipping.eta or '-'}"
            )
        return details

    @property
    def _queues(self) -> CardIssueInput:
        """The input, which names the queues of every step once the run began."""
        assert self._input is not None
        return self._input


@workflow.defn(name=CARD_WORKFLOW)
class CardEntity:
    """One card, for its whole life."""

    @workflow.init
    def __init__(self, card: CardInput) -> None:
        # Set before any handler runs: an update may arrive in the same
        # workflow task that starts a (continued) run.
        self._state: CardInput | None = card
        self._money = CardMoney(card)
        # Issuer events wait here and are applied in order by the run loop.
        self._inbox: list[CardNetworkEvent] = []
        # The card's ProcessStatus as its stage (its state, STATUS_EXCEPTION
        # or STATUS_REPLACED), with its details; "starting" (no status) until
        # the run upserts the first.
        self.progress = ProcessStage("starting", self._details)
        # The run loop's units of work (an expiry pass, one issuer event),
        # started and done: what a decision waits for
        # (CARD_DECISIONS_AFTER_EVENTS_PATCH).
        self._work_started = 0
        self._work_done = 0
        # Decisions wait for the loop to be idle (CARD_DECISIONS_WHEN_IDLE_PATCH).
        self._decisions_wait_for_idle = False

    @workflow.run
    async def run(self, card: CardInput) -> str:
        assert self._state is not None
        self.progress.enter(
            card.state.value,
            CARD_ID.value_set(card.card_id),
            CUSTOMER_ID.value_set(card.customer_id),
        )
        if (
            self._money.durable
            and self._state.state is CardState.CLOSED
            and self._state.closed_at is None
        ):
            # A run started for late money on a card already closed.
            self._state.closed_at = workflow.now()
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self.progress.search(
                CURRENCY.value_set(card.currency.value), PROVIDER.value_set(ISSUER)
            )
        self._show()
        while True:
            await self._serve(card.history_events_max)
            # No message is lost: updates in flight finish before the run
            # ends, and events they let in are applied first. (A decision
            # waiting for the loop to be idle waits on events that arrived
            # meanwhile: the loop applies them first.)
            await workflow.wait_condition(
                lambda: (
                    workflow.all_handlers_finished()
                    or (self._decisions_wait_for_idle and bool(self._inbox))
                )
            )
            if not self._inbox:
                break
        if not self._finished():
            workflow.continue_as_new(self._state)
        if self._state.replaced_by:
            return f"replaced by {self._state.replaced_by}"
        return "closed"

    async def _serve(self, history_events_max: int) -> None:
        """Apply issuer events and expire holds until the card is finished or
        its history is long enough to continue as new."""

        def history_full() -> bool:
            return workflow.info().get_current_history_length() > history_events_max

        while True:
            expiry = self._money.next_expiry()
            wake = expiry
            linger_ends = self._linger_ends()
            if linger_ends is not None and (wake is None or linger_ends < wake):
                wake = linger_ends
            timeout = None
            if wake is not None:
                timeout = max((wake - workflow.now()).total_seconds(), 0.001)
            try:
                await workflow.wait_condition(
                    lambda expiry=expiry, linger_ends=linger_ends: (  # type: ignore[misc]
                        bool(self._inbox)
                        or self._finished()
                        or history_full()
                        # A new hold (an authorization) may expire sooner.
                        or self._money.next_expiry() != expiry
                        # Closed just now: the late-money window starts.
                        or self._linger_ends() != linger_ends
                    ),
                    timeout=timeout,
                )
            except TimeoutError:
                pass
            await self._work(self._money.expire_due())
            while self._inbox:
                await self._work(self._money.apply(self._inbox.pop(0)))
            self._show()
            if (self._finished() or history_full()) and not self._inbox:
                return

    async def _work(self, unit: Coroutine[Any, Any, None]) -> None:
        self._work_started += 1
        try:
            await unit
        finally:
            self._work_done += 1

    async def _after_earlier_events(self) -> None:
        """Let the run loop apply every issuer event that reached the card
        before this decision (CARD_DECISIONS_WHEN_IDLE_PATCH): the decision then
        comes at the same point of the card's history however the worker was
        handed its tasks. (Before that patch: only the unit of work in
        progress, then the loop's own wait, registered earlier, checked first.)"""
        if not workflow.patched(CARD_DECISIONS_AFTER_EVENTS_PATCH):
            return
        if workflow.patched(CARD_DECISIONS_WHEN_IDLE_PATCH):
            # Every event that reached the card before the decision is applied
            # first, however the activations were cut (CARD_DECISIONS_WHEN_IDLE_PATCH).
            self._decisions_wait_for_idle = True
            await workflow.wait_condition(self._idle)
            return
        in_progress = self._work_started
        await workflow.wait_condition(lambda: self._work_done >= in_progress)

    def _idle(self) -> bool:
        """No unit of the run loop in progress and no issuer event queued."""
        return self._work_done >= self._work_started and not self._inbox

    def _closed(self) -> bool:
        return self._state is not None and self._state.state is CardState.CLOSED

    def _finished(self) -> bool:
        """Closed, with no authorization still holding funds; under the
        CARD_MONEY_PATCH also with no exception waiting for an operator and
        past the window in which the issuer may still send money."""
        if not (self._closed() and not self._money.next_expiry()):
            return False
        if not self._money.durable:
            return True
        linger_ends = self._linger_ends()
        return (
            not self._money.open_exceptions()
            and linger_ends is not None
            and workflow.now() >= linger_ends
        )

    def _linger_ends(self) -> datetime | None:
        """When a closed card's process may end (CARD_MONEY_PATCH)."""
        state = self._state
        assert state is not None
        if not self._closed() or state.closed_at is None or not self._money.durable:
            return None
        return state.closed_at + timedelta(seconds=state.policy.closed_linger_seconds)

    def _show(self) -> None:
        """Show the card's details; under CARD_SEARCH_ATTRIBUTES_PATCH also its
        ProcessStatus, when it changed."""
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.show()

    def _publish_status(self) -> None:
        """Enter the card's ProcessStatus (upserted) when it changed:
        STATUS_EXCEPTION while an exception waits for an operator,
        STATUS_REPLACED once replaced, else the card's state. The details are
        shown either way."""
        state = self._state
        assert state is not None
        if self._money.open_exceptions():
            status = STATUS_EXCEPTION
        elif state.replaced_by:
            status = STATUS_REPLACED
        else:
            status = state.state.value
        if status != self.progress.stage:
            self.progress.enter(status)
        else:
            self.progress.show()

    def _details(self) -> str:
        state = self._state
        assert state is not None
        held = sum(r.held_minor for r in state.authorizations.values())
        details = f"Card {state.card_id}: {state.state.value}"
        if state.replaced_by:
            details += f", replaced by {state.replaced_by}"
        if state.authorizations:
            details += f" | {len(state.authorizations)} open authorizations holding {held}"
        exceptions = self._money.open_exceptions()
        if exceptions:
            details += f" | {len(exceptions)} exceptions for an operator"
        return details

    async def _change(self, target: CardState, change: CardStateChange) -> str:
        assert self._state is not None
        self._state.changes += 1
        key = step_key(f"state/{self._state.changes}-{target.value}")
        await step(
            self._state,
            CardActivities.set_card_state,
            CardStateRequest(
                key=key, card_id=self._state.card_id, state=target, reason=change.reason
            ),
        )
        self._state.state = target
        if target is CardState.CLOSED and self._money.durable:
            self._state.closed_at = workflow.now()
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.enter(target.value)
        return target.value

    def _require(self, *allowed: CardState) -> None:
        assert self._state is not None
        if self._state.state not in allowed:
            raise refused(Refusal.WRONG_STATE, f"the card is {self._state.state.value}")

    @workflow.update(name=FREEZE_UPDATE)
    async def freeze(self, change: CardStateChange) -> str:
        return await self._change(CardState.PAUSED, change)

    @freeze.validator
    def _validate_freeze(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN)

    @workflow.update(name=UNFREEZE_UPDATE)
    async def unfreeze(self, change: CardStateChange) -> str:
        return await self._change(CardState.OPEN, change)

    @unfreeze.validator
    def _validate_unfreeze(self, change: CardStateChange) -> None:
        self._require(CardState.PAUSED)

    @workflow.update(name=CLOSE_UPDATE)
    async def close(self, change: CardStateChange) -> str:
        return await self._change(CardState.CLOSED, change)

    @close.validator
    def _validate_close(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)
        assert self._state is not None
        holding = [r for r in self._state.authorizations.values() if r.held]
        if holding:
            held = sum(r.held_minor for r in holding)
            raise refused(
                Refusal.OPEN_AUTHORIZATIONS,
                f"the card has {len(holding)} open authorizations holding {held}; "
                "close it once they clear, are reversed or expire",
            )

    @workflow.update(name=AUTHORIZE_UPDATE)
    async def authorize(self, request: AuthorizationRequest) -> AuthorizationAnswer:
        await self._after_earlier_events()
        answer = await self._money.authorize(request)
        self._show()
        return answer

    @authorize.validator
    def _validate_authorize(self, request: AuthorizationRequest) -> None:
        assert self._state is not None
        if request.card_id != self._state.card_id:
            raise refused(Refusal.INVALID_REQUEST, f"card_id {request.card_id} is not this card")
        if request.requested_at is None:
            # The hold's expiry derives from it (validators never run on replay).
            raise refused(
                Refusal.INVALID_REQUEST, "requested_at (the issuer's time of asking) is required"
            )

    @workflow.signal(name=NETWORK_EVENT_SIGNAL)
    def network_event(self, event: CardNetworkEvent) -> None:
        self._inbox.append(event)

    @workflow.update(name=RESOLVE_EXCEPTION_UPDATE)
    async def resolve_exception(self, decision: ExceptionDecision) -> str:
        await self._after_earlier_events()
        resolution = await self._money.resolve_exception(decision)
        self._show()
        return resolution

    @resolve_exception.validator
    def _validate_resolve_exception(self, decision: ExceptionDecision) -> None:
        found = next(
            (e for e in self._money.open_exceptions() if e.id == decision.exception_id), None
        )
        if found is None:
            raise refused(
                Refusal.NOT_FOUND,
                f"exception_id {decision.exception_id} is not an open exception",
            )
        if (decision.action == "dismiss") != (found.kind == "ledger_conflict"):
            raise refused(
                Refusal.INVALID_REQUEST,
                "action dismiss is for a ledger_conflict exception, and a ledger_conflict"
                " exception is dismissed once put right (charge and write_off move money)",
            )

    @workflow.update(name=LIMITS_UPDATE)
    def set_limits(self, limits: SpendingLimits) -> SpendingLimits:
        assert self._state is not None
        self._state.limits = limits
        return limits

    @set_limits.validator
    def _validate_limits(self, limits: SpendingLimits) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    @workflow.update(name=REPORT_LOST_UPDATE)
    async def report_lost(self, change: CardStateChange) -> str:
        return await self._replace("lost", change)

    @report_lost.validator
    def _validate_lost(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    @workflow.update(name=REPORT_STOLEN_UPDATE)
    async def report_stolen(self, change: CardStateChange) -> str:
        return await self._replace("stolen", change)

    @report_stolen.validator
    def _validate_stolen(self, change: CardStateChange) -> None:
        self._require(CardState.OPEN, CardState.PAUSED)

    async def _replace(self, reason: str, change: CardStateChange) -> str:
        """Block this card (the issuer closes it on reissue) and start its replacement."""
        state = self._state
        assert state is not None
        replacement = await step(
            state,
            CardActivities.reissue_card,
            CardReissueRequest(
                key=step_key(f"reissue-{reason}"),
                card_id=state.card_id,
                reason=ReissueReason(reason),
            ),
        )
        state.state = CardState.CLOSED
        state.replaced_by = replacement.id
        if self._money.durable:
            state.closed_at = workflow.now()
        successor = CardInput(
            card_id=replacement.id,
            customer_id=state.customer_id,
            state=replacement.state,
            currency=state.currency,
            limits=state.limits,
            policy=state.policy,
            ledger_task_queue=state.ledger_task_queue,
            providers_task_queue=state.providers_task_queue,
            workflows_task_queue=state.workflows_task_queue,
            history_events_max=state.history_events_max,
        )
        if workflow.patched(CARD_REPLACEMENT_PATCH):
            await self._issue_replacement(replacement, successor)
        else:
            await start_card_entity(successor)
        await step(
            state,
            ProviderActivities.notify_customer,
            Notification(
                key=step_key(f"notify/{reason}"),
                customer_id=state.customer_id,
                subject=f"Your card was reported {reason}",
                body=f"We blocked the card ending {state.card_id[-4:]} and issued a new one.",
            ),
        )
        if workflow.patched(CARD_SEARCH_ATTRIBUTES_PATCH):
            self._publish_status()
        else:
            self.progress.enter(STATUS_REPLACED)
        return str(replacement.id)

    @workflow.query
    def status(self) -> CardInput:
        assert self._state is not None
        return self._state

    async def _issue_replacement(self, replacement: Card, successor: CardInput) -> None:
        """Start what the replacement needs and record it in `cards`, linked to
        this card, like any card cardflow issued (webhook routing and billing
        read it there). A virtual replacement is open: its entity starts now.
        A physical one is shipped and opens only once activated after
        delivery, so its own issuing process follows it.

        An issuing process rather than shipping and activation on the entity:
        CardIssue already follows a physical card (shipping webhooks that only
        move forward, rescheduling until shipped, activation once delivered,
        deadlines that close a card never delivered or activated), and the
        gateway's shipping route, the API's `/card-issues/{request_id}` routes
        and the CLI reach a card being shipped through it; the entity then
        starts open, as for every new card, and only ever holds a card that
        can pay."""
        state = self._state
        assert state is not None
        request_id = replacement_request_id(replacement.id)
        if replacement.type is CardType.PHYSICAL:
            await start_card_issue(
                CardIssueInput(
                    request_id=request_id,
                    customer_id=state.customer_id,
                    kind="physical",
                    currency=state.currency,
                    card_policy=state.policy,
                    reissue=CardReissue(replaces=state.card_id, card=replacement, entity=successor),
                    ledger_task_queue=state.ledger_task_queue,
                    providers_task_queue=state.providers_task_queue,
                    workflows_task_queue=state.workflows_task_queue,
                )
            )
        else:
            await start_card_entity(successor)
        # Recorded once its process runs, so the first webhook that finds the
        # record also finds the process.
        await step(
            state,
            CardActivities.record_card,
            CardRecord(
                card_id=replacement.id,
                request_id=request_id,
                customer_id=state.customer_id,
                kind=replacement.type.value,
                replaces=state.card_id,
            ),
        )


__all__ = ["CardEntity", "CardIssue", "date"]
