"""Card issuing `card-issue/{request_id}`: one card, from the request to open.

Refuse a customer whose onboarding is not approved; charge the issuance fee;
create the cardholder (once per customer) and the card. A virtual card is
open at once. A physical card follows the shipping webhooks (signal
`shipping_update`), takes `reschedule_delivery` until it ships and `activate`
once delivered. Saga: each step registers its undo as it succeeds (fee ->
refund, card -> close at the issuer); a later failure runs them in reverse,
shielded from cancellation. On success it starts the card's entity workflow
(workflows/cards.py), which outlives it.

A physical replacement of a lost or stolen card is followed by its own
issuing, `card-issue/{replacement card id}`, started by the old card's
entity: it takes its shipping webhooks, `reschedule_delivery` and `activate`
exactly as for a new card (no fee) and starts the replacement's entity once
it is activated.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.card_controls import CardControlActivities
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
    from schemas.card_controls import ScopedControls
    from schemas.cards import (
        CardActivationRequest,
        CardInput,
        CardIssueInput,
        CardIssueResult,
        CardIssueStatus,
        CardReissue,
        DeliveryRescheduleRequest,
        RescheduleDelivery,
        ShippingUpdate,
    )
    from schemas.customers import KycStatus, Notification
    from schemas.issuer import Card, CardState, CardType, ShippingStatus
    from schemas.ledger import TransferRequest
    from schemas.providers import ISSUER
    from schemas.refusals import Refusal, refused
    from schemas.search import CARD_ID, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation
    from workflows.cards import replacement_request_id, start_card_entity
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.onboarding import wallet_code
    from workflows.process import ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for

CARD_ISSUE_WORKFLOW = "CardIssue"
SHIPPING_UPDATE_SIGNAL = "shipping_update"
RESCHEDULE_UPDATE = "reschedule_delivery"
ACTIVATE_UPDATE = "activate"
# An issuing cancelled while its fee posts (the activity runs on and may
# charge it) refunds the fee if the ledger says it was charged, learnt by
# submitting the fee again with its key; runs recorded before it kept the fee.
CARD_ISSUE_INTERRUPTED_FEE_PATCH = "card-issue-interrupted-fee-refunded"
# With it, a new card starts with the program's and its customer's card
# controls in force (schemas/card_controls.py), read once it is recorded.
CARD_ISSUE_CONTROLS_PATCH = "card-issue-reads-controls"


def card_issue_workflow_id(request_id: str) -> str:
    return f"card-issue/{request_id}"


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


async def issue_replacement(state: CardInput, replacement: Card, successor: CardInput) -> None:
    """Start what the replacement of the card in `state` needs (the card's
    entity calls this once the issuer reissued it) and record it in `cards`,
    linked to that card, like any card cardflow issued (webhook routing and
    billing read it there). A virtual replacement is open: its entity starts
    now. A physical one is shipped and opens only once activated after
    delivery, so its own issuing process follows it.

    An issuing process rather than shipping and activation on the entity:
    CardIssue already follows a physical card (shipping webhooks that only
    move forward, rescheduling until shipped, activation once delivered,
    deadlines that close a card never delivered or activated), and the
    gateway's shipping route, the API's `/card-issues/{request_id}` routes
    and the CLI reach a card being shipped through it; the entity then
    starts open, as for every new card, and only ever holds a card that
    can pay."""
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

        scoped: dict[str, ScopedControls] = {}
        if workflow.patched(CARD_ISSUE_CONTROLS_PATCH):
            # Read once the card is recorded: a change of controls saved
            # before this read is here, one saved after it finds the card.
            current = await step(request, CardControlActivities.current, request.customer_id)
            scoped = {controls.scope: controls for controls in current}
        await start_card_entity(
            CardInput(
                card_id=card.id,
                customer_id=request.customer_id,
                state=CardState.OPEN,
                currency=request.currency,
                policy=request.card_policy,
                scoped_controls=scoped,
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


__all__ = ["CardIssue"]
